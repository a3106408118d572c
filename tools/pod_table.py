"""The pod table of docs/training.md: `python -m musicflow_jax.aot` for every config x topology (one process each;
a report already in --work is reused, so an interrupted table resumes), printed as one markdown table.

    python tools/pod_table.py --work /tmp/pod --configs stage1_base,stage2_base \
        --topologies v5e:4x4,v5e:8x8,v5e:16x16,v5p:2x2x4,v5p:4x4x4,v5p:4x4x8,v6e:8x8,v6e:16x16,v4:4x4x8,h100:8 \
        [--set 'mesh.shape=(1,-1,1)'] [--tag flash --set model.attention=flash]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from musicflow_jax.pod.chips import CHIPS


def report_path(work: Path, config: str, topology: str, tag: str) -> Path:
    return work / f"{config}_{topology.replace(':', '-')}{'_' + tag if tag else ''}.json"


def run(work: Path, config: str, topology: str, sets: list[str], tag: str) -> dict | None:
    out = report_path(work, config, topology, tag)
    if not out.is_file():
        cmd = [sys.executable, "-m", "musicflow_jax.aot", "--config", config, "--topology", topology,
               *sum((["--set", s] for s in sets), []), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{config} on {topology}: {proc.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return None
    return json.loads(out.read_text())


def row(config: str, topology: str, rep: dict, tag: str) -> str:
    t, rl = rep["train"], rep["train"]["roofline"]
    chips, hosts = rep["chips"], rep["hosts"]
    mem = t["memory_per_device_gib"]
    wire = sum(c["wire_gb"] for c in t["collectives"].values())
    return (f"| {config}{' (' + tag + ')' if tag else ''} | {topology} ({chips} chips, {hosts} hosts) | "
            f"{'yes' if t['fits'] else '**no**'} | {mem['peak']:.2f} / {t['hbm_gib']:g} | "
            f"{t['hbm_gb_per_device']:.3g} | "
            f"{wire:.3g} | {rl['compute_s'] * 1e3:.3g} / {rl['hbm_s'] * 1e3:.3g} / {rl['collectives_s'] * 1e3:.3g} | "
            f"{rl['bound_s'] * 1e3:.3g}-{rl['serial_s'] * 1e3:.3g} ms ({rl['limited_by']}) | "
            f"{rl['sched_s'] * 1e3:.3g} ms, {t['schedule']['collectives_hidden']:.0%} | "
            f"{rl['mfu_sched']:.2f} ({rl['mfu_serial']:.2f}-{rl['mfu_bound']:.2f}) | {t['compile_s']:.0f} |")


HEADER = ("| config | topology | fits | peak GiB / chip HBM | HBM GB / step / chip | wire GB / step / chip | "
          "compute / HBM / collectives ms | step estimate (overlapped-serial) | in the compiled order, collective time "
          "hidden | MFU in the compiled order (serial-overlapped) | compile s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="folder of the JSON reports (reused when present)")
    ap.add_argument("--configs", default="stage1_base,stage2_base")
    ap.add_argument("--topologies", required=True, help=f"comma-separated, chips: {sorted(CHIPS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tag", default="", help="names these reports (e.g. flash) beside untagged ones")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(HEADER)
    for topology in args.topologies.split(","):
        for config in args.configs.split(","):
            rep = run(work, config, topology, args.set, args.tag)
            if rep is not None:
                print(row(config, topology, rep, args.tag), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
