"""Flow-matching math: the OT path, its velocity, the masked loss, the mask and CFG-drop samplers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musicflow_jax.core import flow
from musicflow_jax.core.config import FlowConfig

SIGMA = 1e-2  # larger than the default so its effect is visible in float32


def _xs(seed=0, shape=(3, 5, 4)):
    k0, k1 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k0, shape), 2.0 + jax.random.normal(k1, shape)


def test_path_endpoints():
    x0, x1 = _xs()
    b = x0.shape[0]
    np.testing.assert_allclose(flow.ot_path(x0, x1, jnp.zeros(b), SIGMA), x0, rtol=0, atol=0)
    # at t = 1 the path sits at x1 with a sigma_min-wide noise residue: x1 + sigma_min x0
    np.testing.assert_allclose(flow.ot_path(x0, x1, jnp.ones(b), SIGMA), x1 + SIGMA * x0, atol=1e-6)
    np.testing.assert_allclose(flow.ot_path(x0, x1, jnp.ones(b), 0.0), x1, atol=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.93])
def test_target_is_time_derivative_of_path(t):
    x0, x1 = _xs(1)
    h = 1e-3
    b = x0.shape[0]
    fd = (flow.ot_path(x0, x1, jnp.full(b, t + h), SIGMA) - flow.ot_path(x0, x1, jnp.full(b, t - h), SIGMA)) / (2 * h)
    np.testing.assert_allclose(fd, flow.ot_target(x0, x1, SIGMA), atol=2e-3)
    # and exactly, via autodiff
    jvp = jax.jvp(lambda tt: flow.ot_path(x0, x1, jnp.full(b, tt), SIGMA), (jnp.float32(t),), (jnp.float32(1.0),))[1]
    np.testing.assert_allclose(jvp, flow.ot_target(x0, x1, SIGMA), atol=1e-6)


def test_masked_loss_hand_computed():
    v = jnp.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], [[1.0, 1.0], [2.0, 0.0], [5.0, 5.0]]])
    u = jnp.zeros_like(v)
    mask = jnp.array([[True, False, False], [True, True, False]])
    # counted frames: (1,2) -> 1+4=5 ; (1,1) -> 2 ; (2,0) -> 4 ; total 11 over 3 frames x 2 dims
    assert float(flow.masked_loss(v, u, mask)) == pytest.approx(11.0 / 6.0)
    np.testing.assert_allclose(flow.per_example_loss(v, u, mask), [5.0 / 2.0, 6.0 / 4.0], rtol=1e-6)
    assert float(flow.masked_loss(v, u, jnp.zeros_like(mask))) == 0.0  # no NaN on an empty mask


def test_span_mask_statistics():
    cfg = FlowConfig(mask_min_frac=0.7, mask_max_frac=1.0, p_full_mask=0.3)
    n, t_max = 20_000, 120
    lengths = np.random.default_rng(0).integers(60, t_max + 1, size=n)
    frame_mask = jnp.arange(t_max)[None, :] < lengths[:, None]
    m = np.asarray(flow.sample_span_mask(jax.random.key(0), frame_mask, cfg))
    assert not (m & ~np.asarray(frame_mask)).any(), "mask leaked into padding"
    # contiguous: at most one rising edge per row
    rises = np.diff(np.pad(m.astype(int), ((0, 0), (1, 0))), axis=1) == 1
    assert rises.sum(1).max() == 1
    frac = m.sum(1) / lengths
    full = m.sum(1) == lengths
    # P(full) = p_full + (1 - p_full) * P(span rounds to the whole length) (~1/(2*0.3*len))
    assert 0.3 < full.mean() < 0.3 + 0.7 * 0.03
    partial = frac[~full]
    assert partial.min() >= 0.7 - 1.0 / 60 and partial.max() <= 1.0
    # the span fraction is U(0.7, 1.0): check its quartiles
    q = np.quantile(frac[frac < 0.98], [0.25, 0.5, 0.75])
    np.testing.assert_allclose(q, 0.7 + 0.28 * np.array([0.25, 0.5, 0.75]), atol=0.01)


def test_cfg_drop_rates():
    cfg = FlowConfig(p_drop_text=0.2, p_drop_context=0.25)
    drop_text, drop_ctx = flow.sample_cfg_drop(jax.random.key(3), 50_000, cfg)
    drop_text, drop_ctx = np.asarray(drop_text), np.asarray(drop_ctx)
    assert drop_ctx[drop_text].all(), "dropping the text must drop the context too"
    assert drop_text.mean() == pytest.approx(0.2, abs=0.01)
    assert drop_ctx[~drop_text].mean() == pytest.approx(0.25, abs=0.01)


def test_time_samplers():
    u = np.asarray(flow.sample_time(jax.random.key(0), 50_000, FlowConfig()))
    assert u.min() >= 0 and u.max() < 1 and u.mean() == pytest.approx(0.5, abs=0.01)
    ln_cfg = FlowConfig(time_sampler="logit_normal", logit_mean=0.5, logit_std=0.8)
    ln = np.asarray(flow.sample_time(jax.random.key(0), 50_000, ln_cfg))
    logit = np.log(ln / (1 - ln))
    assert logit.mean() == pytest.approx(0.5, abs=0.02) and logit.std() == pytest.approx(0.8, abs=0.02)


def test_flow_loss_wiring():
    """The network sees ctx = x1 off the span (0 on it / when dropped) and an emptied text mask when
    text is dropped; the loss counts exactly the span frames."""
    cfg = dataclasses.replace(FlowConfig(), p_drop_text=0.5, p_drop_context=0.0, p_full_mask=0.0)
    b, t, d, l_txt = 64, 16, 3, 5
    k1, k2 = jax.random.split(jax.random.key(0))
    batch = {
        "x1": jax.random.normal(k1, (b, t, d)) + 3.0,
        "frame_mask": jnp.arange(t)[None] < jnp.where(jnp.arange(b) % 2 == 0, t, t - 4)[:, None],
        "text_emb": jax.random.normal(k2, (b, l_txt, 7)),
        "text_mask": jnp.ones((b, l_txt), bool),
    }
    seen = {}

    def apply_fn(inp: flow.FlowInput):
        seen.update(ctx=inp.ctx_btd, text=inp.text_bld, text_mask=inp.text_mask_bl, x_t=inp.x_t_btd)
        return jnp.zeros_like(inp.x_t_btd)

    loss, aux = flow.flow_loss(apply_fn, jax.random.key(1), batch, cfg)
    ctx, tm = np.asarray(seen["ctx"]), np.asarray(seen["text_mask"])
    dropped = ~tm.any(1)
    assert 0.35 < dropped.mean() < 0.65
    assert np.all(np.asarray(seen["text"])[dropped] == 0)
    x1, fm = np.asarray(batch["x1"]), np.asarray(batch["frame_mask"])
    is_ctx = np.abs(ctx).sum(-1) > 0
    kept = ~dropped
    np.testing.assert_array_equal(ctx[kept][is_ctx[kept]], x1[kept][is_ctx[kept]])
    assert not is_ctx[dropped].any(), "context must be dropped with the text"
    gen = (~is_ctx) & fm  # span frames of the kept rows (rows with dropped ctx: all valid frames are 0)
    # with v = 0 the per-example loss is the mean of u^2 over the span; recompute u from x_t and t
    t_b = np.asarray(aux["t"])[:, None, None]
    x0 = (np.asarray(seen["x_t"]) - t_b * x1) / (1 - (1 - cfg.sigma_min) * t_b)
    u = x1 - (1 - cfg.sigma_min) * x0
    row = kept.nonzero()[0][0]
    expect = (u[row][gen[row]] ** 2).mean()
    assert float(aux["loss_per_example"][row]) == pytest.approx(expect, rel=1e-4)
    assert np.isfinite(float(loss))


def test_guided_velocity():
    vc, vu = jnp.array([1.0, 3.0]), jnp.array([0.5, -1.0])
    np.testing.assert_allclose(flow.guided_velocity(vc, vu, 1.0), vc)
    np.testing.assert_allclose(flow.guided_velocity(vc, vu, 0.0), vu)
    np.testing.assert_allclose(flow.guided_velocity(vc, vu, 3.0), vu + 3.0 * (vc - vu))


def test_caption_drop_keeps_the_meta_tokens():
    """flow.p_drop_caption (text.meta): the caption's own tokens of a p_drop_caption share of the text-kept examples
    are masked while their tempo / key tokens stay; the text-dropped examples still see nothing; and with
    p_drop_caption = 0 the draws are those of a batch without meta marks (old runs reproduce)."""
    cfg = dataclasses.replace(FlowConfig(), p_drop_text=0.2, p_drop_caption=0.5)
    b, l_cap, e = 4000, 5, 8
    batch = {
        "x1": jnp.ones((b, 6, 2)),
        "text_emb": jnp.ones((b, l_cap + 2, e)),
        "text_mask": jnp.ones((b, l_cap + 2), bool).at[: b // 2, -1].set(False),  # half name no key
        "text_is_meta": jnp.broadcast_to(jnp.arange(l_cap + 2) >= l_cap, (b, l_cap + 2)),
    }
    seen = {}

    def apply_fn(inp: flow.FlowInput):
        seen.update(text_mask=np.asarray(inp.text_mask_bl), x_t=np.asarray(inp.x_t_btd))
        return jnp.zeros_like(inp.x_t_btd)

    flow.flow_loss(apply_fn, jax.random.key(0), batch, cfg)
    tm = seen["text_mask"]
    caption_on, meta_on = tm[:, :l_cap], tm[:, l_cap:]
    text_dropped = ~meta_on[:, 0]  # every example names a tempo: its token goes only with the text
    assert text_dropped.mean() == pytest.approx(0.2, abs=0.02)
    assert not tm[text_dropped].any()
    kept = ~text_dropped
    assert (caption_on[kept].all(1) | ~caption_on[kept].any(1)).all(), "a caption is dropped whole"
    assert (~caption_on[kept, 0]).mean() == pytest.approx(0.5, abs=0.03)
    np.testing.assert_array_equal(meta_on[kept], np.asarray(batch["text_mask"])[kept, l_cap:])
    # off: the same draws as without the marks
    off = dataclasses.replace(cfg, p_drop_caption=0.0)
    flow.flow_loss(apply_fn, jax.random.key(0), batch, off)
    with_marks = dict(seen)
    flow.flow_loss(apply_fn, jax.random.key(0), {k: v for k, v in batch.items() if k != "text_is_meta"}, off)
    np.testing.assert_array_equal(with_marks["text_mask"], seen["text_mask"])
    np.testing.assert_array_equal(with_marks["x_t"], seen["x_t"])


def _gaussian_flow(m: float, sd1: float, s_min: float):
    """The OT path from N(0, 1) to N(m, sd1^2) in closed form: the marginal velocity v(x, t) and the exact average
    velocity u(x, t, s) = (X_s - x) / (s - t) of the ODE's trajectory X through x at t (X_s - s m scales with the
    marginal's standard deviation)."""
    def sd(t):
        a = 1 - (1 - s_min) * t
        return jnp.sqrt(a**2 + (t * sd1) ** 2)

    def v(x, t):
        a = 1 - (1 - s_min) * t
        return m + (x - t * m) * (-(1 - s_min) * a + t * sd1**2) / sd(t) ** 2

    def u(x, t, s):
        return (s * m + (x - t * m) * sd(s) / sd(t) - x) / (s - t)

    return v, u


def test_average_velocity_identity_holds_for_the_exact_average_velocity():
    """MeanFlow's identity in this convention: for the exact average velocity of a Gaussian OT flow, u = v +
    (s - t) d/dt u (the JVP), so average_velocity_target returns u itself; a wrong sign or tangent would not."""
    v, u = _gaussian_flow(m=2.0, sd1=0.5, s_min=SIGMA)
    k1, k2 = jax.random.split(jax.random.key(0))
    t = jax.random.uniform(k1, (64,), minval=0.05, maxval=0.6)
    s = t + jax.random.uniform(k2, (64,), minval=0.05, maxval=0.35)
    x = jax.random.normal(k1, (64, 3, 2)) * 1.5
    got_u, target = flow.average_velocity_target(lambda xx, tt: u(xx, flow._bcast(tt, xx), flow._bcast(s, xx)),
                                                 x, t, s, v(x, flow._bcast(t, x)))
    np.testing.assert_allclose(target, got_u, rtol=1e-4, atol=1e-4)
    # the instantaneous velocity is not the average over a finite interval: the identity separates them
    _, wrong = flow.average_velocity_target(lambda xx, tt: v(xx, flow._bcast(tt, xx)), x, t, s,
                                            v(x, flow._bcast(t, x)))
    assert float(jnp.abs(wrong - v(x, flow._bcast(t, x))).max()) > 0.1


def test_interval_sampler():
    t, s = flow.sample_interval(jax.random.key(0), 50_000, 0.25, FlowConfig())
    t, s = np.asarray(t), np.asarray(s)
    assert (t >= 0).all() and (t <= s).all() and (s < 1).all()
    assert (t == s).mean() == pytest.approx(0.25, abs=0.01)
    # the rest: min and max of two uniforms, E = 1/3 and 2/3
    assert t[t != s].mean() == pytest.approx(1 / 3, abs=0.01) and s[t != s].mean() == pytest.approx(2 / 3, abs=0.01)


def test_interval_sampler_on_the_samplers_jumps():
    """p_grid 0.6 with 2 jumps: of the 75 % with s != t, 60 % are [0, 1/2] or [1/2, 1] (half each); the rest and the
    s = t anchors are the draws of p_grid = 0 (its own key): existing runs keep their intervals."""
    key, n = jax.random.key(0), 50_000
    t, s = (np.asarray(a) for a in flow.sample_interval(key, n, 0.25, FlowConfig(), jumps=2, p_grid=0.6))
    t0, s0 = (np.asarray(a) for a in flow.sample_interval(key, n, 0.25, FlowConfig()))
    first, second = (t == 0.0) & (s == 0.5), (t == 0.5) & (s == 1.0)
    assert (t == s).mean() == pytest.approx(0.25, abs=0.01)
    assert first.mean() == pytest.approx(0.75 * 0.3, abs=0.01) and second.mean() == pytest.approx(0.75 * 0.3, abs=0.01)
    plain = ~(first | second)
    assert (plain & (t != s)).mean() == pytest.approx(0.75 * 0.4, abs=0.01)
    np.testing.assert_array_equal(t[plain], t0[plain])  # the instant ones (velocity anchors) included
    np.testing.assert_array_equal(s[plain], s0[plain])
