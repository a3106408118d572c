"""pod/hlo.py reads what a compiled program moves off its optimized HLO, and pod/roofline.py turns it into time: checked
against XLA's own count of the same program and against closed forms."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from musicflow_jax.pod import hlo, roofline, schedule
from musicflow_jax.pod.chips import CHIPS

STEPS, ROWS, COLS = 7, 64, 128


@pytest.fixture(scope="module")
def scanned_psum():
    """A 7-step scan whose body all-reduces a (64, 128) f32 block over 8 devices."""
    mesh = jax.make_mesh((8,), ("d",))

    def body(c, _):
        return c + jax.lax.psum(jnp.tanh(c @ c[:ROWS].T) @ c[:ROWS], "d"), None

    def f(x):
        return jax.lax.scan(body, x, None, length=STEPS)[0]

    fn = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("d"), out_specs=P("d")))
    x = jax.ShapeDtypeStruct((8 * ROWS, COLS), jnp.float32, sharding=NamedSharding(mesh, P("d")))
    return fn.lower(x).compile()


def test_loop_bodies_count_their_trips(scanned_psum):
    """The all-reduce inside the scan runs 7 times: 7 x 32 KiB, each device sending 2 x 7/8 of it (ring)."""
    block = ROWS * COLS * 4
    once, every = hlo.traffic(scanned_psum.as_text(), trips=False), hlo.traffic(scanned_psum.as_text())
    assert every.loops == (STEPS,)
    (c,) = [s for s in every.collectives if s.kind == "all-reduce"]
    assert (c.group, c.bytes, c.count) == (8, block, STEPS)
    assert every.wire_bytes == pytest.approx(STEPS * 2 * 7 / 8 * block)
    assert once.collective_summary()["all-reduce"]["count"] == 1
    # the body's traffic is paid 7 times, the rest once
    assert every.bytes_accessed > 5 * once.bytes_accessed


def test_bytes_match_xla_when_loops_count_once(scanned_psum):
    """With each loop body counted once (as XLA's cost analysis does), the parse reproduces XLA's bytes accessed."""
    xla = scanned_psum.cost_analysis()["bytes accessed"]
    assert hlo.traffic(scanned_psum.as_text(), trips=False).bytes_accessed == pytest.approx(xla, rel=0.01)


def test_shape_bytes():
    assert hlo.shape_bytes("bf16[2,64,64]{1,2,0:T(8,128)(2,1)}") == 2 * 64 * 64 * 2
    assert hlo.shape_bytes("(f32[768]{0:T(1024)}, s32[], pred[3])") == 768 * 4 + 4 + 3


def test_async_collectives_count_their_results():
    """An async all-gather-start returns (operand, result[, context]): its payload is the gathered result."""
    text = """HloModule m
ENTRY %main (p: f32[64,128]) -> f32[512,128] {
  %p = f32[64,128]{1,0} parameter(0)
  %ags = (f32[64,128]{1,0}, f32[512,128]{1,0}) all-gather-start(%p), replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %agd = f32[512,128]{1,0} all-gather-done(%ags)
}
"""
    (c,) = hlo.traffic(text).collectives
    assert (c.kind, c.group, c.bytes, c.count) == ("all-gather", 8, 512 * 128 * 4, 1)
    assert hlo.tuple_elements("(f32[2,3]{1,0}, /*index=1*/bf16[4]{0}, u32[])") == ["f32[2,3]{1,0}", "bf16[4]{0}",
                                                                                      "u32[]"]


def test_roofline_closed_form():
    """1 TFLOP on a v5p (459 TFLOP/s), 2.765 GB of HBM traffic (2765 GB/s), 6 GB on the wire (600 GB/s): 2.18 ms,
    1 ms, 10 ms; collective-bound; MFU counts the model's 0.5 TFLOP (the rest is remat's recomputation)."""
    r = roofline.estimate(CHIPS["v5p"], 1e12, 0.5e12, 2.765e9, 6e9)
    assert r["compute_s"] == pytest.approx(1 / 459, abs=1e-5) and r["hbm_s"] == pytest.approx(1e-3, abs=1e-5)
    assert r["collectives_s"] == pytest.approx(0.01) and r["limited_by"] == "collectives"
    assert r["bound_s"] == pytest.approx(0.01) and r["serial_s"] == pytest.approx(0.01 + 1e-3 + 1 / 459, abs=1e-5)
    assert r["mfu_bound"] == pytest.approx(0.5e12 / 459e12 / 0.01, abs=1e-3)


def test_async_slices_read_their_slice():
    """TPU's async slice of a stacked weight into on-chip memory (`S(1)`) reads the slice from HBM once: neither the
    whole operand (its tuple's first element) nor the on-chip copy is HBM traffic."""
    text = """HloModule m
ENTRY %main (p: bf16[768,12,64]) -> bf16[768,3,64] {
  %p = bf16[768,12,64]{0,2,1:T(8,128)(2,1)} parameter(0)
  %ss = ((bf16[768,12,64]{0,2,1:T(8,128)(2,1)}), bf16[768,3,64]{0,2,1:T(8,128)(2,1)S(1)}, s32[]{:S(2)}) \
slice-start(%p), slice={[0:768], [0:3], [0:64]}
  ROOT %sd = bf16[768,3,64]{0,2,1:T(8,128)(2,1)S(1)} slice-done(%ss)
}
"""
    assert hlo.traffic(text).bytes_accessed == 768 * 3 * 64 * 2


def test_schedule_reads_the_scan_bodies_matmuls(scanned_psum):
    """The replay of the compiled 7-step scan counts each step's two (64 x 128 x 64) matmuls per device, 7 times, and
    lies between the roofline's fully overlapped and serial times."""
    chip = CHIPS["v5e"]
    tl = schedule.timeline(scanned_psum.as_text(), chip)
    assert tl.matmul_flops == STEPS * 2 * (2 * ROWS * ROWS * COLS)
    t = hlo.traffic(scanned_psum.as_text())
    r = roofline.estimate(chip, tl.matmul_flops, tl.matmul_flops, t.bytes_accessed, t.wire_bytes, tl.seconds)
    assert r["bound_s"] <= r["sched_s"] <= r["serial_s"] and r["mfu_bound"] >= r["mfu_sched"] >= r["mfu_serial"]


COUNTING_LOOP = """HloModule m
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4]{0} get-tuple-element(%p), index=1
  %step = s32[] constant(STEP)
  %next = s32[] add(%i, %step)
  %y = f32[4]{0} add(%x, %x)
  ROOT %t = (s32[], f32[4]{0}) tuple(%next, %y)
}
%cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(8)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}
ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %x)
  %w = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[4]{0} get-tuple-element(%w), index=1
}
"""


@pytest.mark.parametrize("step,trips", [(1, 8), (2, 4), (3, 3)])
def test_loops_counting_by_more_than_one(step, trips):
    """`i < 8` with the body adding `step` to i runs ceil(8 / step) times: XLA's windowed einsum loops (FSDP matmuls
    as collective-permute rings on TPU) handle two shards per trip and count by 2 (read as 8 trips, they doubled the
    FLOPs, bytes and wire bytes of stage1_base on v5e:4x4)."""
    comps = hlo.parse(COUNTING_LOOP.replace("STEP", str(step)))
    assert hlo.multiplicities(comps)[1] == [trips]
    # each trip: the counter's add (3 x 4 bytes) and the f32[4] add (3 x 16 bytes)
    assert hlo.traffic(COUNTING_LOOP.replace("STEP", str(step))).bytes_accessed == trips * (3 * 4 + 3 * 16)


FUSED_SUM = """HloModule m
%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}
%fused_sum (g: f32[512,128]) -> f32[OUT,128] {
  %g = f32[512,128]{1,0} parameter(0)
  %ar = f32[512,128]{1,0} all-reduce(%g), channel_id=1, replica_groups={{0,1},{2,3}}, to_apply=%add
  %pid = u32[] partition-id()
  %zero = u32[] constant(0)
  ROOT %mine = f32[OUT,128]{1,0} dynamic-slice(%ar, %pid, %zero), dynamic_slice_sizes={OUT,128}
}
ENTRY %main (g: f32[512,128]) -> f32[OUT,128] {
  %g = f32[512,128]{1,0} parameter(0)
  ROOT %f = f32[OUT,128]{1,0} fusion(%g), kind=kCustom, calls=%fused_sum
}
"""


def test_an_all_reduce_each_device_slices_its_share_of_is_a_reduce_scatter():
    """Read by structure, whatever the fused computation is called: a 256 KiB sum over pairs of which each device keeps
    its half is a reduce-scatter (each sends half of it); keeping a quarter is not a scatter over 2: an all-reduce."""
    (half,) = hlo.traffic(FUSED_SUM.replace("OUT", "256")).collectives
    assert (half.kind, half.group, half.bytes) == ("reduce-scatter", 2, 512 * 128 * 4)
    assert half.wire_bytes == 512 * 128 * 4 / 2
    (quarter,) = hlo.traffic(FUSED_SUM.replace("OUT", "128")).collectives
    assert (quarter.kind, quarter.group) == ("all-reduce", 2)
