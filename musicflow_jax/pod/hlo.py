"""What a compiled program moves, read off its optimized HLO text: bytes each executed instruction reads and writes
(HBM traffic) and its collectives with their bytes, counting every instruction as often as it runs.

XLA's `cost_analysis()` counts a while loop's body once, so for a scanned model (one loop per U-Net half, forward and
backward) it reports a fraction of the real traffic. Here the module's call graph is walked from ENTRY: a while body
runs its trip count times (the bound its condition compares the counter with), fusions, calls and conditional
branches once per call. Instructions inside fused computations are not counted on their own: a fusion reads its operands
and writes its result once (the slices of an operand it only slices; the update of a result it updates in place), a
copy-start (prefetch to on-chip memory) reads its operand, and values XLA placed in another memory space
(layout `S(1)`: TPU's on-chip memory) cost nothing to read or write. This is the traffic of ideal reuse inside each
fusion: on CPU, with every trip count taken as 1, it reproduces XLA's `cost_analysis()["bytes accessed"]`
(tests/unit/pod/test_hlo.py); the TPU backend's own analysis also charges re-reads of tiles and counts loop bodies
once.

Collective bytes are the bytes each device sends over the interconnect in a ring implementation of a group of n
devices: all-gather and all-to-all (n-1)/n of the result, reduce-scatter (n-1)/n of the operand, all-reduce twice
that, collective-permute the whole operand. The TPU compiler's forms are read as what they do: a collective split
into pieces fused with the matmuls around it (async collective fusion: one channel id in several fusions) counts
once; an all-reduce fused with the slice each device keeps (TPU's `all-reduce-scatter` fusions: the sum's only uses
are slices of 1/n of it) is a reduce-scatter; groups named over the mesh (`replica_groups=mesh[...]`, with or without
`device_ids`) have the product of the named axes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Sequence

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
               "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
# instructions that move no HBM bytes of their own (control flow counts its callees; async *-done pairs their start)
# the ends of async collectives (a done pairs with the start it takes as operand)
COLLECTIVE_DONES = {f"{c}-done" for c in COLLECTIVES} | {"async-done"}
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "copy-done", "async-update",
               "send-done", "recv-done", "slice-done", "add-dependency", "domain"} | COLLECTIVE_DONES

_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    out_bytes: float  # all of the result (collectives' payload)
    operands: list[str]
    attrs: str
    args: str = ""  # the text between the parentheses (a constant's value)
    root: bool = False
    hbm_bytes: float = 0.0  # the part of the result that lives in HBM
    shape: str = ""


@dataclasses.dataclass
class Computation:
    name: str
    entry: bool
    instructions: list[Instruction]


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # all-gather | all-reduce | reduce-scatter | all-to-all | collective-permute
    group: int  # devices per replica group
    bytes: float  # result bytes (operand bytes for reduce-scatter) of one execution
    count: float  # executions per step (trip counts applied)

    @property
    def wire_bytes(self) -> float:
        """Bytes one device sends per step (ring algorithm)."""
        n = max(self.group, 1)
        share = (n - 1) / n
        factor = {"all-reduce": 2 * share, "collective-permute": 1.0}.get(self.kind, share)
        return factor * self.bytes * self.count


_ARRAY_LAYOUT = re.compile(r"\b([a-z]\w*)\[([\d,]*)\](\{[^{}]*\})?")


def shape_bytes(shape: str, *, hbm_only: bool = False) -> float:
    """Bytes of an HLO shape string (arrays and tuples of them). `hbm_only`: leave out arrays whose layout puts them in
    another memory space (`S(1)`: TPU's on-chip memory, where XLA's memory-space assignment prefetches operands)."""
    total = 0.0
    for dt, dims, layout in _ARRAY_LAYOUT.findall(shape):
        if hbm_only and re.search(r"S\([1-9]", layout or ""):
            continue
        total += DTYPE_BYTES.get(dt, 0) * math.prod(int(d) for d in dims.split(",") if d)
    return total


def dims(shape: str) -> list[int]:
    """The dimensions of an HLO array shape string (the first array of a tuple)."""
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_args(rest: str) -> tuple[str, str]:
    """(operand list, attributes) of the text after an instruction's opening parenthesis."""
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i], rest[i + 1:]
    return rest, ""


def parse(text: str) -> dict[str, Computation]:
    comps: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m:
                current = Computation(m.group(2), bool(m.group(1)), [])
            continue
        if line.startswith("}"):
            comps[current.name] = current
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            args, attrs = _split_args(m.group(5))
            current.instructions.append(Instruction(m.group(2), m.group(4), shape_bytes(m.group(3)),
                                                    _OPERAND.findall(args), attrs, args, bool(m.group(1)),
                                                    shape_bytes(m.group(3), hbm_only=True), m.group(3)))
    return comps


def tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape `(a, b, ...)`; [shape] for an array."""
    shape = shape.strip()
    if not shape.startswith("("):
        return [shape]
    out, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if (ch == "," and depth == 1) or (ch == ")" and depth == 0):
            out.append(re.sub(r"/\*.*?\*/", "", shape[start:i]).strip())
            start = i + 1
    return [e for e in out if e]


def _result_bytes(ins: Instruction) -> float:
    """A collective's payload: its result, or for an async start ((operands, results[, context]) tuple) the results."""
    if ins.opcode.endswith("-start"):
        elems = tuple_elements(ins.shape)
        if len(elems) >= 2:
            return shape_bytes(elems[1])
    return ins.out_bytes


def attr(attrs: str, key: str) -> list[str]:
    m = re.search(rf"\b{key}=\{{([^}}]*)\}}", attrs) or re.search(rf"\b{key}=%?([\w.\-]+)", attrs)
    return [] if not m else [s.strip().lstrip("%") for s in m.group(1).split(",") if s.strip()]


def trip_count(loop: Instruction, comps: dict[str, Computation]) -> int | None:
    """A scan's trip count: XLA's `known_trip_count` when the backend records it (CPU), else the integer bound the
    loop condition's ROOT compares the counter with (`i < N`, possibly wrapped in a fusion: TPU), divided by the step
    the body adds to the counter (from 0). None for any other condition (diffrax's step loop: `t < t1 and i <
    max_steps`, data-dependent)."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.attrs)
    if known:
        return max(int(known.group(1)), 1)
    cond = attr(loop.attrs, "condition")
    if not cond or cond[0] not in comps:
        return None
    instrs = comps[cond[0]].instructions
    root = next((i for i in instrs if i.root), None)
    consts = {i.name: i for i in instrs if i.opcode == "constant"}
    if root is not None and root.opcode == "fusion":  # compare(counter, constant) fused: look inside
        inner = comps.get(next(iter(attr(root.attrs, "calls")), ""))
        inner_root = next((i for i in inner.instructions if i.root), None) if inner else None
        if inner_root is None or inner_root.opcode != "compare":
            return None
        root = Instruction(root.name, "compare", root.out_bytes, root.operands, inner_root.attrs, root.args, True)
    if root is None or root.opcode != "compare" or "direction=LT" not in root.attrs:
        return None
    by_name = {i.name: i for i in instrs}
    counter = next((by_name[o] for o in root.operands if o in by_name and by_name[o].opcode == "get-tuple-element"),
                   None)
    index = re.search(r"\bindex=(\d+)", counter.attrs) if counter is not None else None
    step = _counter_step(loop, comps, int(index.group(1))) if index else 1
    for op in root.operands:
        value = consts[op].args.strip() if op in consts else ""
        if value.lstrip("-").isdigit():
            return max(-(-int(value) // step), 1)
    return None


def _counter_step(loop: Instruction, comps: dict[str, Computation], index: int) -> int:
    """How much the loop body adds to its counter (tuple element `index`) per trip: XLA's windowed einsum loops
    (FSDP matmuls as collective-permute rings) handle two shards per trip and count by 2. 1 when not readable."""
    body = comps.get(next(iter(attr(loop.attrs, "body")), ""))
    root = next((i for i in body.instructions if i.root), None) if body else None
    if root is None or root.opcode != "tuple" or index >= len(root.operands):
        return 1
    by_name = {i.name: i for i in body.instructions}
    update = by_name.get(root.operands[index])
    if update is None or update.opcode != "add":
        return 1
    for op in update.operands:
        value = by_name[op].args.strip() if op in by_name and by_name[op].opcode == "constant" else ""
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def multiplicities(comps: dict[str, Computation], *, trips: bool = True, unknown_trips: Sequence[int] = ()
                   ) -> tuple[dict[str, float], list[int]]:
    """How many times each non-fused computation runs per execution of ENTRY, and the trip count of each while loop
    met (depth first, in program order). A loop whose bound cannot be read (a data-dependent condition) takes the
    next of `unknown_trips` (1 once they are used up); `trips=False` counts every body once, as XLA's cost analysis."""
    counts: dict[str, float] = defaultdict(float)
    loops: list[int] = []
    pending = list(unknown_trips)
    entry = next(c for c in comps.values() if c.entry)

    def visit(name: str, times: float) -> None:
        counts[name] += times
        for ins in comps[name].instructions:
            if ins.opcode == "while":
                body = attr(ins.attrs, "body")
                n = trip_count(ins, comps)
                if n is None:
                    n = pending.pop(0) if pending else 1
                loops.append(n)
                for b in body:
                    if b in comps:
                        visit(b, times * (n if trips else 1))
            elif ins.opcode in ("call", "async-start"):
                for c in attr(ins.attrs, "calls") + attr(ins.attrs, "to_apply"):
                    if c in comps:
                        visit(c, times)
            elif ins.opcode == "conditional":
                for c in attr(ins.attrs, "branch_computations"):
                    if c in comps:
                        visit(c, times)

    visit(entry.name, 1.0)
    return dict(counts), loops


_SLICING = ("dynamic-slice", "slice", "gather")


def _fusion_bytes(ins: Instruction, sizes: dict[str, float], comps: dict[str, Computation]) -> float:
    """A fusion reads each operand once and writes its result once, except what it slices: an operand only sliced
    inside (a scanned layer's weights taken from the stacked array) costs the slices, and a result that is a
    dynamic-update-slice of an operand (an in-place write into a loop's output buffer) costs the update. Results
    that are operands passed through (TPU's async collective fusions hand the buffers of a collective in flight from
    one fusion to the next) or a collective's result (written by the interconnect, not by the fusion) cost nothing."""
    called = comps.get(next(iter(attr(ins.attrs, "calls")), ""))
    if called is None:
        return ins.hbm_bytes + sum(sizes.get(o, 0.0) for o in ins.operands)
    params = {i.name: int(i.args.strip()) for i in called.instructions
              if i.opcode == "parameter" and i.args.strip().isdigit()}
    inner = {i.name: i for i in called.instructions}
    users: dict[str, list[Instruction]] = defaultdict(list)
    for i in called.instructions:
        for o in i.operands:
            users[o].append(i)
    root = next((i for i in called.instructions if i.root), None)
    updated = set()  # parameters written in place by the root's dynamic-update-slices
    roots = [inner[o] for o in root.operands if o in inner] if root is not None and root.opcode == "tuple" else [root]
    write = 0.0
    for r in roots:
        if r is None or r.opcode == "parameter" or r.opcode.removesuffix("-start") in COLLECTIVES:
            continue  # a buffer passed through (an async collective's state), or what the interconnect writes
        if r.opcode == "dynamic-update-slice" and len(r.operands) > 1:
            updated.add(r.operands[0])
            write += inner[r.operands[1]].out_bytes if r.operands[1] in inner else 0.0
        else:
            write += r.out_bytes
    read = 0.0
    for name, index in params.items():
        full = sizes.get(ins.operands[index], 0.0) if index < len(ins.operands) else 0.0
        us = [u for u in users.get(name, []) if not (u.opcode == "dynamic-update-slice" and name in updated
                                                       and u.operands[0] == name) and not (u is root and
                                                                                           u.opcode == "tuple")]
        if us and all(u.opcode in _SLICING and u.operands[0] == name for u in us):
            read += min(full, sum(u.out_bytes for u in us))
        elif us:
            read += full
    in_hbm = ins.hbm_bytes / ins.out_bytes if ins.out_bytes else 1.0  # results XLA placed on chip are not written out
    return read + write * in_hbm


def instruction_bytes(ins: Instruction, sizes: dict[str, float], comps: dict[str, Computation]) -> float:
    if ins.opcode in _NO_TRAFFIC:
        return 0.0
    if ins.opcode == "fusion":
        return _fusion_bytes(ins, sizes, comps)
    if ins.opcode == "dynamic-update-slice":  # in place: reads and writes the update only
        upd = sizes.get(ins.operands[1], 0.0) if len(ins.operands) > 1 else 0.0
        return 2 * upd
    if ins.opcode in _SLICING:
        return min(sizes.get(ins.operands[0], 0.0), ins.out_bytes) + ins.hbm_bytes if ins.operands else ins.hbm_bytes
    if ins.opcode == "copy-start":  # a prefetch between memory spaces: its operand is read from HBM once
        return sum(sizes.get(o, 0.0) for o in ins.operands)
    if ins.opcode == "slice-start":  # async slice ((operand), slice, context): reads the slice; writing on chip is free
        elems = tuple_elements(ins.shape)
        if len(elems) >= 2:
            return min(sizes.get(ins.operands[0], 0.0), shape_bytes(elems[1])) + shape_bytes(elems[1], hbm_only=True)
    return ins.hbm_bytes + sum(sizes.get(o, 0.0) for o in ins.operands)


def _group_size(attrs: str) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=[^{]*)?\s*\{([^}]*)\}", attrs)
    if m:
        sizes = dict((k.strip("' "), int(v)) for k, v in (kv.split("=") for kv in m.group(1).split(",")))
        return math.prod(sizes[a.strip("' ")] for a in m.group(2).split(",") if a.strip("' "))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = re.search(r"source_target_pairs=\{([^}]*)\}", attrs)
    return 2 if m else 1


@dataclasses.dataclass(frozen=True)
class Traffic:
    bytes_accessed: float  # per device per execution
    collectives: tuple[Collective, ...]
    loops: tuple[int, ...]  # trip counts of the while loops found
    by_op: tuple[tuple[str, float], ...] = ()  # (the jax op an instruction came from, bytes), most first

    def collective_summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for c in self.collectives:
            s = out.setdefault(c.kind, {"count": 0.0, "bytes": 0.0, "wire_bytes": 0.0})
            s["count"] += c.count
            s["bytes"] += c.bytes * c.count
            s["wire_bytes"] += c.wire_bytes
        return out

    @property
    def wire_bytes(self) -> float:
        return sum(c.wire_bytes for c in self.collectives)


def traffic(text: str, *, trips: bool = True, unknown_trips: Sequence[int] = ()) -> Traffic:
    """HBM bytes and collectives of one execution of an optimized HLO module (`compiled.as_text()`); see
    `multiplicities` for the loops."""
    comps = parse(text)
    counts, loops = multiplicities(comps, trips=trips, unknown_trips=unknown_trips)
    total, coll = 0.0, []
    by_op: dict[str, float] = defaultdict(float)
    for name, times in counts.items():
        comp = comps[name]
        sizes = {i.name: i.hbm_bytes for i in comp.instructions}  # what reading a value costs in HBM traffic
        channels: set[str] = set()  # a collective split over several fusions (TPU async collective fusion) counts once
        for ins in comp.instructions:
            moved = times * instruction_bytes(ins, sizes, comps)
            total += moved
            if moved:
                by_op[_op_name(ins)] += moved
            for channel, c in instruction_collectives(ins, comps):
                if channel is not None:
                    if channel in channels:
                        continue
                    channels.add(channel)
                coll.append(dataclasses.replace(c, count=times))
    top = tuple(sorted(by_op.items(), key=lambda kv: -kv[1]))
    return Traffic(total, tuple(coll), tuple(loops), top)


def instruction_collectives(ins: Instruction, comps: dict[str, Computation]) -> list[tuple[str | None, Collective]]:
    """The collectives an instruction runs, once each: (channel id or None, Collective with count 1). A collective
    op or async start itself, or those inside the computation a fusion / async start calls (TPU's async collective
    fusions carry one piece of a split collective each, all with the collective's channel id). A fused all-reduce
    whose result each device only slices its 1/n of (TPU's `all-reduce-scatter` fusions) is the reduce-scatter it
    implements."""
    kind = ins.opcode.removesuffix("-start")
    inner: list[tuple[Instruction, Computation | None]] = [(ins, None)] if kind in COLLECTIVES else []
    if ins.opcode in ("fusion", "async-start"):  # collectives fused with their producers
        for f in attr(ins.attrs, "calls"):
            comp = comps.get(f, Computation(f, False, []))
            inner += [(i, comp) for i in comp.instructions if i.opcode.removesuffix("-start") in COLLECTIVES]
    out: list[tuple[str | None, Collective]] = []
    for c_ins, comp in inner:
        channel = re.search(r"\bchannel_id=(\d+)", c_ins.attrs)
        c_kind = c_ins.opcode.removesuffix("-start")
        nbytes, group = _result_bytes(c_ins), _group_size(c_ins.attrs)
        if c_kind == "all-reduce" and comp is not None and _only_sliced(c_ins, comp, group):
            c_kind = "reduce-scatter"  # the all-reduce's result is the operand the group scatters
        elif c_kind == "reduce-scatter":
            nbytes = nbytes * group
        out.append((channel.group(1) if channel else None, Collective(c_kind, group, nbytes, 1.0)))
    return out


def _only_sliced(reduce: Instruction, comp: Computation, group: int) -> bool:
    """Whether every use of an all-reduce's result (through tuple elements and bitcasts) is a slice of 1/group of
    it: each device keeps its shard of the sum, i.e. a reduce-scatter."""
    users: dict[str, list[Instruction]] = defaultdict(list)
    for i in comp.instructions:
        for o in i.operands:
            users[o].append(i)
    sizes = {i.name: i.out_bytes for i in comp.instructions}
    frontier, slices = [reduce.name], []
    while frontier:
        for u in users.get(frontier.pop(), []):
            if u.opcode in ("get-tuple-element", "bitcast"):
                frontier.append(u.name)
            elif u.opcode in ("dynamic-slice", "slice") and u.operands[0] in sizes:
                slices.append(u)
            else:
                return False
    return group > 1 and bool(slices) and all(u.out_bytes * group == sizes[u.operands[0]] for u in slices)


def _op_name(ins: Instruction) -> str:
    """The JAX operation an instruction came from (its op_name metadata without the jit/transform prefixes), or its
    opcode."""
    m = re.search(r'op_name="([^"]*)"', ins.attrs)
    if not m:
        return ins.opcode
    parts = [p for p in m.group(1).split("/") if not p.startswith(("jit(", "jvp(", "transpose(", "closed_call",
                                                                   "while", "body", "checkpoint", "vmap(",
                                                                   "rematted_computation"))]
    return "/".join(parts[-2:]) or ins.opcode
