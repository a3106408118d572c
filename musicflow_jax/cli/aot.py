"""`python -m musicflow_jax.aot --config configs/stage2_base.py --topology v5e:16x16 [--set ...] [--generate]
[--sweep]`: compile the config's real train step ahead of time, from abstract shapes, for a TPU slice (libtpu's
compile-only devices: no TPU needed; `bash tools/install_libtpu.sh` once) or, without --topology, for this
machine's devices. Prints whether it fits the chip's HBM, per-chip memory, FLOPs per step, the collectives in the
compiled program and their bytes, compile time, and a roofline estimate of the step time and MFU (JSON on stdout).

--generate also compiles generation (both stages' ODE solves for one --seconds window of --gen-batch captions; the
other stage's config from --pair, by default the config's stage1_/stage2_ partner). --sweep compiles candidate meshes,
remat policies and micro-batchings and prints the `--set` line of the fitting one with the best estimated MFU.
Bad input (unknown topology, a mesh that does not divide the chips, no libtpu): one `error:` line, exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import jax

from musicflow_jax.cli import _common
from musicflow_jax.core import config_io
from musicflow_jax.core.config import Config
from musicflow_jax.errors import MusicFlowError
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod import sweep as pod_sweep
from musicflow_jax.pod import topology
from musicflow_jax.utils.atomic_io import write_text


def _pair_of(spec: str) -> str:
    p = Path(spec)
    name = p.stem if p.suffix == ".py" else spec
    for a, b in (("stage1_", "stage2_"), ("stage2_", "stage1_")):
        if name.startswith(a):
            other = b + name[len(a):]
            return str(p.with_name(other + ".py")) if p.suffix == ".py" else other
    raise MusicFlowError(f"--generate: cannot tell the other stage of config {spec!r}: give it with --pair "
                         "configs/<other stage>.py", param="pair")


def main(argv: list[str] | None = None) -> int:
    ap = _common.parser("aot", __doc__)
    ap.add_argument("--config", required=True, help="configs/<name>.py or a config name (e.g. stage2_base)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--topology", default="", help="TPU slice, e.g. v5e:16x16, v5p:4x4x8, v6e:8x8, v4:4x4x8 "
                    "(default: this machine's devices, no roofline)")
    ap.add_argument("--libtpu", default=None, help="libtpu.so (default: $TPU_LIBRARY_PATH, else the folder "
                    "tools/install_libtpu.sh fills)")
    ap.add_argument("--generate", action="store_true", help="also compile generation (both stages, one window)")
    ap.add_argument("--no-train", action="store_true", help="with --generate: compile generation only")
    ap.add_argument("--pair", default="", help="the other stage's config for --generate")
    ap.add_argument("--seconds", type=float, default=10.0, help="--generate: window length in seconds")
    ap.add_argument("--gen-batch", type=int, default=0, help="--generate: captions per call (0: one per batch shard)")
    ap.add_argument("--sweep", action="store_true", help="search mesh x remat x micro-batching (needs --topology)")
    ap.add_argument("--out", default="", help="also write the JSON report to this file")
    ap.add_argument("--dump-hlo", default="", metavar="DIR", help="write the optimized programs (train.hlo.txt, "
                    "generate.hlo.txt) there")
    args = ap.parse_args(argv)
    if args.topology and not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")  # the TPU is compile-only: JAX itself runs on the CPU
    return _common.run(lambda: _body(args), debug=args.debug)


def _body(args: Any) -> int:
    if args.no_train and not args.generate:
        raise MusicFlowError("--no-train leaves nothing to compile: add --generate", param="no_train")
    if args.sweep and not args.topology:
        raise MusicFlowError("--sweep needs --topology (the chip's HBM decides what fits): add e.g. --topology "
                             "v5p:4x4x8", param="sweep")
    if args.seconds <= 0 or args.gen_batch < 0:
        raise MusicFlowError(f"--seconds must be > 0 and --gen-batch >= 0, got {args.seconds} and {args.gen_batch}",
                             param="seconds")
    cfg = config_io.load(args.config, args.set, (Config,))
    topo = topology.load(args.topology, args.libtpu) if args.topology else None
    devices = list(topo.devices) if topo else None
    chip = topo.chip if topo else None
    where = f"{topo.name} ({topo.chips} chips, {topo.hosts} hosts)" if topo else "this machine's devices"
    out: dict[str, Any] = {"topology": args.topology or None}
    if topo:
        out.update(chips=topo.chips, hosts=topo.hosts, chip_source=topo.chip.source)
    if args.sweep:
        print(f"sweep {cfg.name} on {where}", file=sys.stderr)
        out["sweep"] = pod_sweep.sweep(cfg, devices, chip)
        best = out["sweep"]["best"]
        print(f"best: {best['set']}  (MFU {best['mfu_sched']:.2f} in the compiled order, "
              f"{best['mfu_serial']:.2f}-{best['mfu_bound']:.2f} serial-overlapped)" if best
              else "nothing fits: a larger slice or a smaller per-chip batch is needed", file=sys.stderr)
    elif not args.no_train:
        print(f"compiling {cfg.name}'s train step for {where}", file=sys.stderr)
        compiled = pod_compile.train_step(cfg, devices)
        out["train"] = pod_compile.report(compiled, chip)
        _summary(out["train"])
        _dump(args.dump_hlo, "train", compiled)
    if args.generate:
        other = config_io.load(args.pair or _pair_of(args.config), args.set, (Config,))
        s1, s2 = (cfg, other) if cfg.model.stage == "semantic" else (other, cfg)
        batch = args.gen_batch or out.get("train", {}).get("data_shards", {}).get("batch_shards") or len(
            devices or jax.devices())
        print(f"compiling generation ({s1.name} + {s2.name}, {args.seconds:g} s, batch {batch}) for {where}",
              file=sys.stderr)
        compiled = pod_compile.generation_step(s1, s2, args.seconds, batch, devices)
        out["generate"] = pod_compile.report(compiled, chip)
        _summary(out["generate"])
        _dump(args.dump_hlo, "generate", compiled)
    text = json.dumps(out, indent=1)
    if args.out:
        write_text(args.out, text + "\n")
    print(text)
    return 0


def _dump(folder: str, name: str, compiled: pod_compile.Compiled) -> None:
    if folder and compiled.hlo_text:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_text(Path(folder) / f"{name}.hlo.txt", compiled.hlo_text)


def _summary(r: dict[str, Any]) -> None:
    mem = r["memory_per_device_gib"]
    fit = "" if "fits" not in r else f" {'fits' if r['fits'] else 'DOES NOT FIT'} in {r['hbm_gib']} GiB;"
    line = (f"  {r['what']}: peak {mem['peak']:.2f} GiB per chip;{fit} {r['step_gflop']:.4g} GFLOP per step; "
            f"compiled in {r['compile_s']:.1f} s")
    if "roofline" in r:
        rl = r["roofline"]
        line += (f"; roofline {rl['bound_s'] * 1e3:.1f}-{rl['serial_s'] * 1e3:.1f} ms ({rl['limited_by']}-bound), "
                 f"MFU {rl['mfu_serial']:.2f}-{rl['mfu_bound']:.2f}")
        if "sched_s" in rl:
            line += f"; in the compiled order {rl['sched_s'] * 1e3:.1f} ms, MFU {rl['mfu_sched']:.2f}"
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
