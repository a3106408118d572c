"""Few-step distillation on an analytic flow (flow.distill_loss): a guided teacher whose conditional and
unconditional fields are exact Gaussian OT velocities, and a student u(x, t, s) = a(t, s) x + b(t, s) (the guided
flow's map is affine in x, so the student can be exact). Trained on the loss alone, the student's one and two jumps
land where the teacher's ODE does from the same noise; before training (the student = the teacher's velocity),
one jump is far off. Every method's target is checked against the exact average velocity in closed form; the loss is
zero where the student already is the teacher (s = t, no guidance)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musicflow_jax.core import flow, sampling
from musicflow_jax.core.config import DISTILL_METHODS, FlowConfig

SIGMA = 1e-2
T, D = 2, 2
COND, UNCOND = (2.0, 0.5), (-1.0, 1.0)  # the teacher's (mean, sd) of the data with and without text
CFG = FlowConfig(sigma_min=SIGMA, p_full_mask=1.0)


def _field(m: float, sd1: float):
    def v(x, t):
        t = flow._bcast(t, x)
        a = 1 - (1 - SIGMA) * t
        return m + (x - t * m) * (-(1 - SIGMA) * a + t * sd1**2) / (a**2 + (t * sd1) ** 2)

    return v


def teacher(inp: flow.FlowInput) -> jax.Array:
    """Exact velocities: the text's field on rows with text, the unconditional one on rows without."""
    has_text = inp.text_mask_bl.any(axis=1)[:, None, None]
    return jnp.where(has_text, _field(*COND)(inp.x_t_btd, inp.t_b), _field(*UNCOND)(inp.x_t_btd, inp.t_b))


H = 64


def init_student(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (3, H)), "b1": jnp.zeros(H), "w2": jax.random.normal(k2, (H, H)) / H**0.5,
            "b2": jnp.zeros(H), "w3": jnp.zeros((H, 2 * D)), "b3": jnp.zeros(2 * D)}


def student(params, inp: flow.FlowInput) -> jax.Array:
    """u = v_cond(x, t) + a(t, s) x + b(t, s) (a, b: a small MLP starting at 0): at init the teacher's conditional
    velocity, and able to be the guided teacher's exact average velocity (affine in x for Gaussian flows)."""
    feats = jnp.stack([2 * inp.t_b - 1, 2 * inp.s_b - 1, inp.s_b - inp.t_b], axis=-1)
    h = jax.nn.silu(jax.nn.silu(feats @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"])
    out = h @ params["w3"] + params["b3"]
    return _field(*COND)(inp.x_t_btd, inp.t_b) + out[:, None, :D] * inp.x_t_btd + out[:, None, D:]


def _batch(key, n=128):
    x1 = COND[0] + COND[1] * jax.random.normal(key, (n, T, D))
    return {"x1": x1, "text_emb": jnp.ones((n, 1, 1)), "text_mask": jnp.ones((n, 1), bool)}


def train(method: str, scale: float, teacher_steps: int, steps: int = 3000):
    """Adam on the distillation loss alone, all steps in one scan."""
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, steps))

    def step(carry, key):
        params, opt = carry
        kb, kl = jax.random.split(key)
        g = jax.grad(lambda p: flow.distill_loss(lambda inp: student(p, inp), teacher, kl, _batch(kb), CFG,
                                                 method=method, cfg_scale=scale, p_instant=0.25,
                                                 teacher_steps=teacher_steps)[0])(params)
        upd, opt = tx.update(g, opt)
        return (optax.apply_updates(params, upd), opt), None

    params = init_student(jax.random.key(1))
    keys = jax.random.split(jax.random.key(100), steps)
    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), keys)[0][0])(params)


def teacher_samples(x0, scale):
    text = jnp.ones((x0.shape[0], 1, 1))
    both = lambda t, x: flow.guided_velocity(  # noqa: E731
        teacher(flow.FlowInput(x, x, jnp.full(x.shape[:1], t), text, jnp.ones((x.shape[0], 1), bool))),
        teacher(flow.FlowInput(x, x, jnp.full(x.shape[:1], t), text, jnp.zeros((x.shape[0], 1), bool))), scale)
    return sampling.solve(both, x0, solver="midpoint", steps=200)[0]


def student_samples(params, x0, jumps):
    text, mask = jnp.ones((x0.shape[0], 1, 1)), jnp.ones((x0.shape[0], 1), bool)

    def field(t, x, s):
        b = x.shape[0]
        return student(params, flow.FlowInput(x, x, jnp.full((b,), t), text, mask, s_b=jnp.full((b,), s)))

    return sampling.average_steps(field, x0, jumps)[0]


@pytest.mark.parametrize("method", ["meanflow", "shortcut"])
def test_student_lands_where_the_guided_teacher_does(method: str):
    """Error of the trained student's 1 and 2 jumps vs the teacher's ODE (200 midpoint steps) from the same noise,
    relative to the samples' spread (untrained: one velocity step, > 2x the spread off)."""
    scale = 2.0
    x0 = jax.random.normal(jax.random.key(7), (512, T, D))
    want = teacher_samples(x0, scale)
    spread = float(jnp.std(want))
    rel = lambda got: float(jnp.sqrt(jnp.mean((got - want) ** 2))) / spread  # noqa: E731
    assert rel(student_samples(init_student(jax.random.key(1)), x0, 1)) > 2.0
    params = train(method, scale, 1)
    errors = [rel(student_samples(params, x0, jumps)) for jumps in (1, 2)]
    assert max(errors) < 0.12, errors


def _exact_average(inp: flow.FlowInput) -> jax.Array:
    """The exact average velocity over [t, s] of the text's Gaussian flow (s = t: its velocity)."""
    m, sd1 = COND
    x, t, s = inp.x_t_btd, flow._bcast(inp.t_b, inp.x_t_btd), flow._bcast(inp.s_b, inp.x_t_btd)
    sd = lambda tt: jnp.sqrt((1 - (1 - SIGMA) * tt) ** 2 + (tt * sd1) ** 2)  # noqa: E731
    gap = jnp.where(s > t, s - t, 1.0)
    return jnp.where(s > t, (s * m + (x - t * m) * sd(s) / sd(t) - x) / gap, _field(m, sd1)(x, inp.t_b))


@pytest.mark.parametrize(("method", "teacher_steps", "tolerance"),
                         [("meanflow", 1, 1e-8), ("shortcut", 1, 1e-8), ("trajectory", 64, 1e-6)])
def test_each_target_is_the_exact_average_velocity(method: str, teacher_steps: int, tolerance: float):
    """Closed form: a student that already is the exact average velocity (no guidance) has zero loss under every
    method's target, up to float32 (and, for the teacher's trajectory, its midpoint steps' error); the trajectory
    target with 1 teacher step over long intervals is the coarse solve's, far from it."""
    loss, _ = flow.distill_loss(_exact_average, teacher, jax.random.key(0), _batch(jax.random.key(3), 512), CFG,
                                method=method, cfg_scale=1.0, p_instant=0.25, teacher_steps=teacher_steps)
    assert float(loss) < tolerance, float(loss)
    if method == "trajectory":
        coarse, _ = flow.distill_loss(_exact_average, teacher, jax.random.key(0), _batch(jax.random.key(3), 512),
                                      CFG, method=method, cfg_scale=1.0, p_instant=0.25, teacher_steps=1)
        assert float(coarse) > 100 * tolerance, float(coarse)


@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_loss_is_zero_where_the_student_is_the_teacher(method: str):
    """s = t always and no guidance: the target is the teacher's velocity, which the untrained student gives."""
    params = init_student(jax.random.key(1))
    loss, aux = flow.distill_loss(lambda inp: student(params, inp), teacher, jax.random.key(0),
                                  _batch(jax.random.key(3)), dataclasses.replace(CFG, p_full_mask=0.0),
                                  method=method, cfg_scale=1.0, p_instant=1.0, teacher_steps=3)
    assert float(loss) < 1e-10 and np.all(np.asarray(aux["interval"]) == 0.0)


def test_adaptive_weighting_is_per_example_and_leaves_the_errors_unweighted():
    """adaptive_p: the loss is the mean of sg(1 / (e + 1e-3)^p) e over examples, e each example's unweighted error
    (reported as loss_per_example), so its gradient is that of mean log(e + 1e-3) at p = 1."""
    params = init_student(jax.random.key(2))
    params["w3"] = 0.1 * jax.random.normal(jax.random.key(4), params["w3"].shape)
    kw = dict(method="meanflow", cfg_scale=2.0, p_instant=0.25, teacher_steps=1)
    args = (teacher, jax.random.key(0), _batch(jax.random.key(3), 64), CFG)
    loss, aux = flow.distill_loss(lambda inp: student(params, inp), *args, adaptive_p=1.0, **kw)
    e = np.asarray(aux["loss_per_example"], np.float64)
    assert float(loss) == pytest.approx(np.mean(e / (e + 1e-3)), rel=1e-5)
    plain, aux0 = flow.distill_loss(lambda inp: student(params, inp), *args, **kw)
    np.testing.assert_allclose(aux0["loss_per_example"], e, rtol=1e-6)
    assert float(plain) == pytest.approx(np.mean(e), rel=1e-5)  # equal-length examples: the masked mean
    g = jax.grad(lambda p: flow.distill_loss(lambda inp: student(p, inp), *args, adaptive_p=1.0, **kw)[0])(params)
    g_log = jax.grad(lambda p: jnp.mean(jnp.log(flow.distill_loss(lambda inp: student(p, inp), *args, **kw)[1][
        "loss_per_example"] + 1e-3)))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_log)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
