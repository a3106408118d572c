"""pod/hlo.py reads what a compiled program moves off its optimized HLO, and pod/roofline.py turns it into time: checked
against XLA's own count of the same program and against closed forms."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from musicflow_jax.pod import hlo, roofline
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
