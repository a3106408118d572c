"""pod/schedule.py replays a compiled program in its order: matmul FLOPs read off dots and TPU's convolutions equal
their closed forms, a collective is hidden exactly behind what runs between its start and its done, a synchronous
one is paid whole, and the link carries one collective at a time."""

import dataclasses

import pytest

from musicflow_jax.pod import hlo, schedule
from musicflow_jax.pod.chips import CHIPS

# round figures: 1 TFLOP/s, 1 TB/s of HBM, 1 GB/s of collective bandwidth
CHIP = dataclasses.replace(CHIPS["v5p"], peak_tflops=1.0, hbm_gbps=1000.0, collective_gbps=1.0)
N = 256
DOT_FLOPS = 2.0 * N**3
DOT_BYTES = 3 * N * N * 4  # two f32 operands read, the result written
GATHER_WIRE = 7 / 8 * 8 * N * N * 4  # all-gather of a (256, 256) f32 shard over 8 devices: 7/8 of the result sent


def module(gather: str) -> str:
    return f"""HloModule m, is_scheduled=true
ENTRY %main (p: f32[256,256], w: f32[256,256]) -> f32[256,256] {{
  %p = f32[256,256]{{1,0}} parameter(0)
  %w = f32[256,256]{{1,0}} parameter(1)
{gather}
  %d1 = f32[256,256]{{1,0}} dot(%p, %w), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
  %d2 = f32[256,256]{{1,0}} dot(%d1, %w), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
{{done}}
  ROOT %d3 = f32[256,256]{{1,0}} dot(%d2, %w), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
}}
"""


ASYNC = module("  %ags = (f32[256,256]{1,0}, f32[2048,256]{1,0}) all-gather-start(%p), channel_id=1, "
               "replica_groups=[1,8]<=[8], dimensions={0}").replace(
    "{done}", "  %agd = f32[2048,256]{1,0} all-gather-done(%ags)")
SYNC = module("  %ag = f32[2048,256]{1,0} all-gather(%p), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}"
              ).replace("{done}", "")


def test_matmul_flops_and_an_async_collective_hidden_behind_what_it_spans():
    """Three 256^3 matmuls (33.6 us each: FLOPs, not bytes, bound them); a 1.84 ms all-gather started before the
    first two and done before the third: exposed 1.84 ms - 2 x 33.6 us - the start's own HBM time (it reads the shard
    and writes its result tuple: 2.6 us)."""
    dot_s = max(DOT_FLOPS / 1e12, DOT_BYTES / 1e12)
    start_s = (N * N * 4 + N * N * 4 + 8 * N * N * 4) / 1e12
    wire_s = GATHER_WIRE / 1e9
    tl = schedule.timeline(ASYNC, CHIP)
    assert tl.matmul_flops == 3 * DOT_FLOPS and tl.kernel_flops == 0
    assert tl.collective_s == pytest.approx(wire_s)
    assert tl.exposed_s == pytest.approx(wire_s - 2 * dot_s - start_s)
    assert tl.seconds == pytest.approx(wire_s + dot_s)


def test_a_synchronous_collective_is_paid_whole():
    tl = schedule.timeline(SYNC, CHIP)
    dot_s, gather_s = DOT_FLOPS / 1e12, 9 * N * N * 4 / 1e12  # the gather's own HBM time: shard read, result written
    assert tl.exposed_s == pytest.approx(GATHER_WIRE / 1e9)
    assert tl.seconds == pytest.approx(GATHER_WIRE / 1e9 + gather_s + 3 * dot_s)


def test_the_link_carries_one_collective_at_a_time():
    """Two async gathers issued together, both done before the last matmul: the second waits for the first on the
    link, so the wait is two gathers' time less the two matmuls they span."""
    text = ASYNC.replace("  %d1 =", "  %ags2 = (f32[256,256]{1,0}, f32[2048,256]{1,0}) all-gather-start(%w), "
                         "channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}\n  %d1 =").replace(
        "  ROOT", "  %agd2 = f32[2048,256]{1,0} all-gather-done(%ags2)\n  ROOT")
    tl = schedule.timeline(text, CHIP)
    dot_s, start_s = DOT_FLOPS / 1e12, 10 * N * N * 4 / 1e12
    assert tl.exposed_s == pytest.approx(2 * GATHER_WIRE / 1e9 - 2 * dot_s - 2 * start_s)


def test_tpu_convolutions_count_only_taps_on_real_input():
    """TPU writes the attention projections as convolutions whose window slides over padding (a 12-tap window over a
    size-1 dimension padded by 11 each side: one real tap per output). From stage2_base's TPU program: the forward
    x (2, 750, 768) . W (768, 12, 64) and its weight gradient both cost 2 x 1500 x 768 x 768 FLOPs."""
    fwd = hlo.Instruction("c", "convolution", 0, ["x", "w"], ", window={size=1x12 pad=0_0x11_11 rhs_reversal=0x1}, "
                          "dim_labels=0bf1_i1o0->0b1f", shape="bf16[2,750,12,64]{3,1,2,0}")
    grad = hlo.Instruction("g", "convolution", 0, ["x", "dy"], ", window={size=12x2 pad=11_11x0_0 rhs_reversal=1x0}, "
                           "dim_labels=1fb0_1i0o->b0f1", shape="bf16[768,12,64,1]{2,0,1,3}")
    flops = 2.0 * 1500 * 768 * 768
    assert schedule.instruction_flops(fwd, {"x": "bf16[2,750,768,1]", "w": "bf16[768,12,64,1]"}, {}) == flops
    assert schedule.instruction_flops(grad, {"x": "bf16[2,750,768,1]", "dy": "bf16[2,750,12,64]"}, {}) == flops


def test_opaque_kernels_get_the_flops_the_program_does_not_show():
    """A Pallas kernel's FLOPs are invisible in the program: given the step's count, the remainder is the kernel's."""
    kernel = '  %k = f32[256,256]{1,0} custom-call(%d2), custom_call_target="tpu_custom_call"\n'
    text = SYNC.replace("  ROOT %d3", kernel + "  ROOT %d3")
    tl = schedule.timeline(text, CHIP, flops_per_device=5 * DOT_FLOPS)
    assert tl.matmul_flops == 3 * DOT_FLOPS and tl.kernel_flops == 2 * DOT_FLOPS
