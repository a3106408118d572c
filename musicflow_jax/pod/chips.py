"""The accelerator figures the roofline uses, one row per chip, each with its public source.

- peak_tflops: dense bf16 matmul peak per chip.
- hbm_gib / hbm_gbps: HBM capacity (GiB) and bandwidth (GB/s) per chip.
- collective_gbps: the all-reduce bandwidth per chip the vendor states for a full pod (pod all-reduce bandwidth /
  chips), i.e. half the bidirectional inter-chip-interconnect bandwidth per chip where that is given instead (NVLink
  for the GPUs, within one 8-GPU host); the ring collectives of `pod.hlo` (bytes each device sends) move at this rate.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the topology prefix: v4, v5e, v5p, v6e
    device_kind: str  # what jax reports for its devices
    peak_tflops: float
    hbm_gib: float
    hbm_gbps: float
    collective_gbps: float
    source: str

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)


CHIPS = {c.name: c for c in (
    Chip("v4", "TPU v4", 275.0, 32.0, 1200.0, 268.6,
         "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB HBM2 at 1200 GBps, all-reduce 1.1 PB/s per 4096-chip "
         "pod"),
    Chip("v5e", "TPU v5 lite", 197.0, 16.0, 819.0, 200.0,
         "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB HBM at 819 GBps, all-reduce 51.2 TB/s per 256-chip "
         "pod (bidirectional ICI 400 GBps per chip)"),
    Chip("v5p", "TPU v5", 459.0, 95.0, 2765.0, 600.0,
         "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GiB HBM2e at 2765 GBps, bidirectional ICI 1200 GBps per "
         "chip"),
    Chip("v6e", "TPU v6 lite", 918.0, 32.0, 1640.0, 400.0,
         "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB HBM at 1640 GBps, all-reduce 102.4 TB/s per "
         "256-chip pod (bidirectional ICI 800 GBps per chip)"),
    Chip("h100", "NVIDIA H100 80GB HBM3", 989.0, 79.1, 3350.0, 450.0,
         "nvidia.com H100 SXM datasheet: 989 TFLOPS bf16 dense (1979 with sparsity), 80 GB HBM3 at 3.35 TB/s, NVLink "
         "900 GB/s"),
    Chip("h200", "NVIDIA H200", 989.0, 140.4, 4800.0, 450.0,
         "nvidia.com H200 SXM datasheet: 989 TFLOPS bf16 dense (1979 with sparsity), 141 GB HBM3e at 4.8 TB/s, NVLink "
         "900 GB/s"),
)}
GPUS = ("h100", "h200")


def chip_named(name: str) -> Chip:
    if name not in CHIPS:
        raise KeyError(name)
    return CHIPS[name]
