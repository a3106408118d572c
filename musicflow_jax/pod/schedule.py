"""A step's time in the compiled order: the optimized program's instructions replayed one after another on one chip,
with its collectives on the interconnect beside them, so that only the collective time the compiler did not hide is
added (pod/roofline.py's `serial_s` adds all of it, `bound_s` none).

The model (per device, one execution of ENTRY):
- Instructions run one at a time in the order the scheduled HLO lists them; each takes its own roofline time, the
  larger of its matmul FLOPs at the chip's peak and its HBM bytes (pod/hlo.py's count) at the HBM bandwidth. A while
  body runs its trip count times, a call its callee, a conditional its slowest branch.
- A collective occupies the interconnect (one at a time, in issue order) for its wire bytes at the chip's collective
  bandwidth. It is issued at the first instruction of its computation that holds it and must be complete at the last:
  an async start and its done, or the first and last of TPU's async collective fusions (start, continuation fusions
  carrying pieces of it beside matmuls, done: one channel id). A collective held by a single instruction (a synchronous
  all-gather, an `all-reduce-scatter` fusion) blocks: its whole time is exposed. One whose done lies in another
  computation (started for the next loop iteration) is taken as complete at its computation's end.
- Matmul FLOPs are read off `dot` and `convolution` instructions (inside fusions too) and cuBLAS GEMM calls; the FLOPs
  of opaque kernels (Pallas: `tpu_custom_call`, Triton, Mosaic) are what the step's counted FLOPs leave over, shared
  equally among the kernels' executions. Elementwise FLOPs are not counted (they run on the vector units beside the
  matrix units and are bounded by the instruction's bytes).
- Async copies and slices (prefetches between memory spaces) are charged in line, as if not overlapped.

So `bound_s <= seconds <= serial_s` up to the per-instruction maxima; the estimate assumes the chip and its links run
at their peaks, as the roofline does.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from musicflow_jax.pod import hlo
from musicflow_jax.pod.chips import Chip

_KERNELS = ("tpu_custom_call", "triton", "mosaic")  # custom-call targets of opaque compute kernels
_GEMM = re.compile(r'"lhs_contracting_dimensions":\[([^\]]*)\]')


@dataclasses.dataclass(frozen=True)
class Timeline:
    seconds: float  # the step
    compute_s: float  # instructions' own time (max of FLOPs and bytes per instruction), summed
    exposed_s: float  # waiting for collectives
    collective_s: float  # all collectives' wire time (the part hidden is collective_s - exposed_s)
    matmul_flops: float  # per device, found in the program (trip counts applied)
    kernel_flops: float  # per device, given to opaque kernels


def instruction_flops(ins: hlo.Instruction, shapes: dict[str, str], comps: dict[str, hlo.Computation]) -> float:
    """Matmul FLOPs of one execution of an instruction (fusions: of what they call)."""
    if ins.opcode == "dot" and ins.operands:
        lhs = hlo.dims(shapes.get(ins.operands[0], ""))
        contracting = [int(d) for d in (hlo.attr(ins.attrs, "lhs_contracting_dims") or []) if d.isdigit()]
        return 2.0 * math.prod(hlo.dims(ins.shape)) * math.prod(lhs[d] for d in contracting if d < len(lhs))
    if ins.opcode == "convolution" and len(ins.operands) > 1:
        return _convolution_flops(ins, hlo.dims(shapes.get(ins.operands[0], "")),
                                  hlo.dims(shapes.get(ins.operands[1], "")))
    if ins.opcode == "custom-call" and "gemm" in ins.attrs and ins.operands:
        m = _GEMM.search(ins.attrs)
        lhs = hlo.dims(shapes.get(ins.operands[0], ""))
        contracting = [int(d.strip('" ')) for d in m.group(1).split(",") if d.strip('" ').isdigit()] if m else []
        out = hlo.tuple_elements(ins.shape)[0]
        return 2.0 * math.prod(hlo.dims(out)) * math.prod(lhs[d] for d in contracting if d < len(lhs))
    if ins.opcode == "fusion":
        total = 0.0
        for f in hlo.attr(ins.attrs, "calls"):
            if f in comps:
                inner = {i.name: i.shape for i in comps[f].instructions}
                total += sum(instruction_flops(i, inner, comps) for i in comps[f].instructions)
        return total
    return 0.0


def _window_pairs(size: int, out: int, taps: int, lo: int, stride: int, lhs_dilate: int, rhs_dilate: int) -> int:
    """How many (output position, window tap) pairs of one spatial dimension land on a real input element (not on
    padding or on the holes of a dilated input)."""
    pairs = 0
    for k in range(taps):
        offset = k * rhs_dilate - lo  # input position (in the dilated input) of output 0's tap k
        if stride == 1 and lhs_dilate == 1:
            pairs += max(0, min(out, size - offset) - max(0, -offset))
        else:
            for o in range(out):
                p = o * stride + offset
                pairs += p >= 0 and p % lhs_dilate == 0 and p // lhs_dilate < size
    return pairs


def _convolution_flops(ins: hlo.Instruction, lhs: list[int], rhs: list[int]) -> float:
    """2 x multiply-adds of a convolution: per output batch and feature element, the kernel's input features times the
    window taps that land on real input, per spatial dimension (TPU writes every matmul as a convolution, some with a
    window sliding over padding to batch a dimension: counting taps on padding would overcount them many times)."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
    out = hlo.dims(ins.shape)
    if labels is None:
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    if len(lhs_l) != len(lhs) or len(rhs_l) != len(rhs) or len(out_l) != len(out) or "i" not in rhs_l:
        return 0.0
    spatial = sorted(ch for ch in out_l if ch.isdigit())
    window = re.search(r"window=\{([^}]*)\}", ins.attrs)
    fields = dict(kv.split("=", 1) for kv in window.group(1).split()) if window else {}

    def per_dim(key: str, default: int) -> list[int]:
        return [int(v) for v in fields[key].split("x")] if key in fields else [default] * len(spatial)

    sizes, strides = per_dim("size", 1), per_dim("stride", 1)
    lhs_dil, rhs_dil = per_dim("lhs_dilate", 1), per_dim("rhs_dilate", 1)
    pads = [int(p.split("_")[0]) for p in fields["pad"].split("x")] if "pad" in fields else [0] * len(spatial)
    macs = float(rhs[rhs_l.index("i")])
    macs *= math.prod(out[j] for j, ch in enumerate(out_l) if not ch.isdigit())
    for d, ch in enumerate(spatial):
        macs *= _window_pairs(lhs[lhs_l.index(ch)], out[out_l.index(ch)], sizes[d], pads[d], strides[d], lhs_dil[d],
                              rhs_dil[d])
    return 2.0 * macs


def _is_kernel(ins: hlo.Instruction) -> bool:
    if ins.opcode != "custom-call":
        return False
    target = re.search(r'custom_call_target="([^"]*)"', ins.attrs)
    return bool(target) and any(k in target.group(1).lower() for k in _KERNELS)


class _Replay:
    def __init__(self, comps: dict[str, hlo.Computation], chip: Chip, unknown_trips: Sequence[int],
                 kernel_flops: float) -> None:
        self.comps, self.kernel_flops = comps, kernel_flops
        self.flops_s = 1.0 / (chip.peak_tflops * 1e12)
        self.bytes_s = 1.0 / (chip.hbm_gbps * 1e9)
        self.wire_s = 1.0 / (chip.collective_gbps * 1e9)
        self.pending = list(unknown_trips)
        self.compute = self.exposed = self.collective = self.flops = self.kernels = 0.0

    def run(self, name: str, times: float) -> float:
        """Seconds of one execution of computation `name` (run `times` times per step, for the totals)."""
        comp = self.comps[name]
        shapes = {i.name: i.shape for i in comp.instructions}
        sizes = {i.name: i.hbm_bytes for i in comp.instructions}
        keys: list[list[str]] = []  # the collectives each instruction holds
        wire: dict[str, float] = {}
        start_of: dict[str, list[str]] = {}
        for ins in comp.instructions:
            held = []
            if ins.opcode in hlo.COLLECTIVE_DONES:  # completes its start's collectives
                held = [k for o in ins.operands for k in start_of.get(o, [])]
            for j, (channel, c) in enumerate(hlo.instruction_collectives(ins, self.comps)):
                key = f"ch{channel}" if channel is not None else f"{ins.name}#{j}"
                wire[key] = c.wire_bytes * self.wire_s
                held.append(key)
            start_of[ins.name] = held
            keys.append(held)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for idx, held in enumerate(keys):
            for k in held:
                first.setdefault(k, idx)
                last[k] = idx
        now = net_free = 0.0
        finish: dict[str, float] = {}
        for idx, ins in enumerate(comp.instructions):
            for k in keys[idx]:  # collectives that must be complete here
                if k in finish and last[k] == idx:
                    waited = max(finish[k] - now, 0.0)
                    self.exposed += times * waited
                    now += waited
            now += self._control(ins, times)
            for k in keys[idx]:  # collectives issued here
                if first[k] != idx:
                    continue
                begin = max(now, net_free)
                net_free = finish[k] = begin + wire[k]
                self.collective += times * wire[k]
                if last[k] == idx:  # synchronous: blocks until done
                    self.exposed += times * (finish[k] - now)
                    now = finish[k]
            flops = instruction_flops(ins, shapes, self.comps)
            if _is_kernel(ins):
                flops += self.kernel_flops
                self.kernels += times
            own = max(flops * self.flops_s, hlo.instruction_bytes(ins, sizes, self.comps) * self.bytes_s)
            self.flops += times * flops
            self.compute += times * own
            now += own
        if finish:  # a computation ends when what it started has arrived
            end = max(finish.values())
            self.exposed += times * max(end - now, 0.0)
            now = max(now, end)
        return now

    def _control(self, ins: hlo.Instruction, times: float) -> float:
        """Seconds of the computations a control instruction runs."""
        if ins.opcode == "while":
            n = hlo.trip_count(ins, self.comps)
            if n is None:
                n = self.pending.pop(0) if self.pending else 1
            body = [b for b in hlo.attr(ins.attrs, "body") if b in self.comps]
            cond = [c for c in hlo.attr(ins.attrs, "condition") if c in self.comps]
            return n * sum(self.run(c, times * n) for c in body + cond)
        if ins.opcode == "call":
            return sum(self.run(c, times) for c in hlo.attr(ins.attrs, "to_apply") + hlo.attr(ins.attrs, "calls")
                       if c in self.comps)
        if ins.opcode == "conditional":
            return max((self.run(c, times) for c in hlo.attr(ins.attrs, "branch_computations") if c in self.comps),
                       default=0.0)
        return 0.0


def timeline(text: str, chip: Chip, *, flops_per_device: float | None = None,
             unknown_trips: Sequence[int] = ()) -> Timeline:
    """Replay an optimized HLO module (`compiled.as_text()`) on `chip`. `flops_per_device`: the step's counted FLOPs,
    whose part the program does not show is given to its opaque kernels; `unknown_trips` as in hlo.multiplicities."""
    comps = hlo.parse(text)
    entry = next(c.name for c in comps.values() if c.entry)
    per_kernel = 0.0
    replay = _Replay(comps, chip, unknown_trips, per_kernel)
    seconds = replay.run(entry, 1.0)
    if flops_per_device is not None and replay.kernels:  # again, with the kernels' share of the FLOPs now known
        per_kernel = max(flops_per_device - replay.flops, 0.0) / replay.kernels
        replay = _Replay(comps, chip, unknown_trips, per_kernel)
        seconds = replay.run(entry, 1.0)
    return Timeline(seconds, replay.compute, replay.exposed, replay.collective, replay.flops - per_kernel
                    * replay.kernels, per_kernel * replay.kernels)
