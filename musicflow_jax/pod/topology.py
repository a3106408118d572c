"""TPU topologies without TPUs: libtpu's compiler describes a slice (`v5e:16x16`, `v5p:4x4x8`, ...) as
compile-only devices on this machine, so the real train and generation steps can be compiled for a pod from a CPU
(jax.experimental.topologies; MaxText's train_compile does the same).

libtpu is not a dependency of the project (with it importable, every JAX start on a CPU machine tries to initialise a
TPU): `bash tools/install_libtpu.sh` puts the pinned wheel's files into a cache folder, and only this module points
JAX at it (TPU_LIBRARY_PATH), only when a topology is asked for.

NVIDIA GPUs the same way (`h100:8`, `h200:16`: GPUs, 8 per host): JAX's CUDA plugin compiles for a GPU described by
an XLA target config (the chip's SM count, memory, bandwidth, compute capability) with no GPU present.
`bash tools/install_jax_cuda.sh` puts the plugin (+ ptxas) into a cache folder that only this module puts on sys.path.
XLA does not autotune without the GPU (Triton GEMM tiles by heuristic) and its GPU cost analysis is unavailable:
the reports' FLOPs and traffic come from the lowered program and the HLO (pod/hlo.py), as for TPUs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from musicflow_jax.errors import MusicFlowError
from musicflow_jax.pod.chips import CHIPS, GPUS, Chip

LIBTPU_VERSION = "0.0.42.1"  # the libtpu jax[tpu]==0.10.2 pins (requirements.txt's jax)
CHIPS_PER_HOST = (2, 2, 1)  # a TPU VM of 4 chips (v5e/v6e multi-host slices use 4-chip VMs, v4/v5p hosts have 4)
_NAME = re.compile(r"^(v\d+[a-z]?):(\d+(?:x\d+){1,2})$")
_GPU_NAME = re.compile(r"^(h\d00):(\d+)$")
JAX_CUDA_VERSION = "0.10.2"  # jax-cuda12-plugin / -pjrt matching requirements.txt's jax
GPUS_PER_HOST = 8
# XLA GPU target configs (stream_executor GpuTargetConfigProto, text): what the compiler knows of the GPU it targets
_H100 = """gpu_device_info { threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
 shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535 memory_bandwidth: 3352320000000
 l2_cache_size: 52428800 clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
 cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536 }
platform_name: "CUDA" dnn_version_info { major: 9 minor: 8 } runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPU_TARGETS = {"h100": _H100,
               "h200": _H100.replace("memory_bandwidth: 3352320000000", "memory_bandwidth: 4800000000000")
               .replace("device_memory_size: 84929347584", "device_memory_size: 150754820096")
               .replace("NVIDIA H100 80GB HBM3", "NVIDIA H200")}


class TopologyError(MusicFlowError):
    """A topology that cannot be built here (unknown name, shape libtpu refuses, libtpu missing)."""


def _cache() -> Path:
    """Where tools/install_libtpu.sh and tools/install_jax_cuda.sh put what they install."""
    return Path(os.environ.get("MUSICFLOW_CACHE", Path.home() / ".cache" / "musicflow_jax"))


def default_libtpu() -> Path:
    return _cache() / f"libtpu-{LIBTPU_VERSION}" / "libtpu" / "libtpu.so"


def libtpu_path(explicit: str | Path | None = None) -> Path:
    """The libtpu.so to compile with: `explicit`, else $TPU_LIBRARY_PATH, else the install script's cache folder."""
    path = Path(explicit or os.environ.get("TPU_LIBRARY_PATH") or default_libtpu())
    if not path.is_file():
        raise TopologyError(f"libtpu not found at {path}: run `bash tools/install_libtpu.sh` (libtpu=="
                            f"{LIBTPU_VERSION} into {default_libtpu().parent.parent}) or set TPU_LIBRARY_PATH",
                            param="libtpu")
    return path


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # e.g. "v5e:16x16"
    chip: Chip
    devices: tuple[Any, ...]  # compile-only jax devices, in the topology's order
    hosts: int

    @property
    def chips(self) -> int:
        return len(self.devices)

    @property
    def chips_per_host(self) -> int:
        return self.chips // self.hosts


def parse_name(name: str) -> tuple[Chip, tuple[int, ...]]:
    m = _NAME.match(name.strip()) or _GPU_NAME.match(name.strip())
    if not m or m.group(1) not in CHIPS:
        raise TopologyError(f"topology {name!r} is not <chip>:<shape> with chip one of {sorted(CHIPS)}: give e.g. "
                            "v5e:16x16, v5p:4x4x8, v6e:8x8, v4:4x4x8, h100:8", param="topology")
    dims = tuple(int(d) for d in m.group(2).split("x"))
    if m.group(1) in GPUS and (dims[0] < 1 or dims[0] % GPUS_PER_HOST and dims[0] > GPUS_PER_HOST):
        raise TopologyError(f"topology {name!r}: give 1-{GPUS_PER_HOST} GPUs or whole hosts of {GPUS_PER_HOST} "
                            f"(e.g. {m.group(1)}:8, {m.group(1)}:16)", param="topology")
    return CHIPS[m.group(1)], dims


def default_jax_cuda() -> Path:
    return _cache() / f"jax-cuda-{JAX_CUDA_VERSION}"


def _load_gpu(name: str, chip: Chip, gpus: int) -> Topology:
    """Compile-only NVIDIA GPUs: JAX's CUDA plugin with the chip's XLA target config (1 slice x hosts x GPUs)."""
    folder = default_jax_cuda()
    if not (folder / ".complete").is_file():
        raise TopologyError(f"JAX's CUDA plugin not found in {folder}: run `bash tools/install_jax_cuda.sh`",
                            param="topology")
    if str(folder) not in sys.path:  # the plugin (namespace package jax_plugins) registers when JAX sets up backends
        sys.path.insert(0, str(folder))
    from jax.experimental import topologies

    hosts, per_host = max(1, gpus // GPUS_PER_HOST), min(gpus, GPUS_PER_HOST)
    try:
        desc = topologies.get_topology_desc(platform="cuda", target_config=GPU_TARGETS[chip.name],
                                            topology=f"1x{hosts}x{per_host}")
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise TopologyError(f"JAX's CUDA plugin cannot build topology {name!r} ({first}): check "
                            "tools/install_jax_cuda.sh ran with this jax version", param="topology") from None
    devices = tuple(desc.devices)
    return Topology(name.strip(), chip, devices, len({d.process_index for d in devices}))


def load(name: str, libtpu: str | Path | None = None) -> Topology:
    """The compile-only devices of a TPU slice (one slice; hosts of 4 chips) or of NVIDIA GPUs (hosts of 8)."""
    chip, dims = parse_name(name)
    if chip.name in GPUS:
        return _load_gpu(name, chip, dims[0])
    os.environ["TPU_LIBRARY_PATH"] = str(libtpu_path(libtpu))
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server: this is not a TPU VM
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to guard, several tools may run
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ["TPU_ACCELERATOR_TYPE"] = accelerator_type(chip, math.prod(dims))  # else libtpu prints warnings
    from jax.experimental import topologies

    bounds = tuple(min(b, d) for b, d in zip(CHIPS_PER_HOST, (*dims, 1, 1)))
    config_name = "megacore" if chip.name == "v4" else "default"  # v4: one device per chip, as v5p
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=name.strip(), chip_config_name=config_name,
                                            chips_per_host_bounds=bounds, num_slices=1)
    except Exception as e:  # libtpu's refusal (an XlaRuntimeError / RuntimeError with a long message)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise TopologyError(f"libtpu {LIBTPU_VERSION} cannot build topology {name!r} ({first}): give a slice shape "
                            f"{chip.name} supports, e.g. {_example(chip.name)}", param="topology") from None
    devices = tuple(desc.devices)
    if len(devices) != math.prod(dims):
        raise TopologyError(f"topology {name!r} gave {len(devices)} devices, expected {math.prod(dims)}",
                            param="topology")
    return Topology(name.strip(), chip, devices, len({d.process_index for d in devices}))


def accelerator_type(chip: Chip, chips: int) -> str:
    """Cloud TPU's name of the slice (v4 and v5p count TensorCores, two per chip)."""
    return {"v4": f"v4-{2 * chips}", "v5p": f"v5p-{2 * chips}", "v5e": f"v5litepod-{chips}"}.get(chip.name,
                                                                                            f"{chip.name}-{chips}")


def _example(chip: str) -> str:
    return {"v4": "v4:2x2x1, v4:4x4x8", "v5p": "v5p:2x2x1, v5p:4x4x8", "v5e": "v5e:2x2, v5e:16x16",
            "v6e": "v6e:2x2, v6e:16x16"}.get(chip, "")
