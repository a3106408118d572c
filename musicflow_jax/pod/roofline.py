"""A roofline estimate of a compiled step's time on a chip: its FLOPs at the chip's bf16 peak, its HBM bytes at the
HBM bandwidth, its collectives' wire bytes at the all-reduce bandwidth (pod/chips.py), per device.

`bound_s` assumes the three overlap perfectly (the slowest one is the step), `serial_s` that none overlaps; a real
step lies between (XLA overlaps the FSDP all-gathers and gradient reduce-scatters of scanned layers with compute).
`sched_s`, when the compiled program is given (pod/schedule.py), replays it in its compiled order: each instruction at
its own roofline, collectives hidden only behind what the compiler scheduled between their start and done.
The compute time counts the FLOPs the chip executes (rematerialisation's recomputation included); MFU credits only
the model's FLOPs (the same step without remat) over the chip's peak in that time, so recomputation lowers it.
"""

from __future__ import annotations

from typing import Any

from musicflow_jax.pod.chips import Chip


def estimate(chip: Chip, flops_per_device: float, model_flops_per_device: float, hbm_bytes: float,
             wire_bytes: float, scheduled_s: float | None = None) -> dict[str, Any]:
    peak = chip.peak_tflops * 1e12
    compute = flops_per_device / (chip.peak_tflops * 1e12)
    memory = hbm_bytes / (chip.hbm_gbps * 1e9)
    network = wire_bytes / (chip.collective_gbps * 1e9)
    bound, serial = max(compute, memory, network), compute + memory + network
    limit = max((("compute", compute), ("hbm", memory), ("collectives", network)), key=lambda kv: kv[1])[0]
    sig = lambda x: float(f"{x:.4g}")  # noqa: E731
    out = {"compute_s": sig(compute), "hbm_s": sig(memory), "collectives_s": sig(network),
           "bound_s": sig(bound), "serial_s": sig(serial), "limited_by": limit,
           "mfu_bound": round(model_flops_per_device / peak / bound, 3) if bound else 0.0,
           "mfu_serial": round(model_flops_per_device / peak / serial, 3) if serial else 0.0}
    if scheduled_s:
        out |= {"sched_s": sig(scheduled_s), "mfu_sched": round(model_flops_per_device / peak / scheduled_s, 3)}
    return out
