"""ODE sampling: convergence order on analytic flows, NFE accounting, in-context exactness."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from musicflow_jax.core import sampling

MU, SIGMA = 1.5, 0.4  # data distribution N(MU, SIGMA^2 I); noise N(0, I)


def gaussian_ot_field(t, x):
    """Exact marginal velocity of the OT path (sigma_min = 0) between N(0, I) and N(MU, SIGMA^2 I).

    x_t = t MU + std_t x0 with std_t = sqrt((1-t)^2 + t^2 SIGMA^2), so
    v(t, x) = MU + (d std_t / dt) / std_t (x - t MU), and the flow maps x0 to MU + SIGMA x0 at t = 1.
    """
    var = (1 - t) ** 2 + (t * SIGMA) ** 2
    dvar_half = -(1 - t) + t * SIGMA**2
    return MU + dvar_half / var * (x - t * MU)


X0 = jax.random.normal(jax.random.key(0), (4, 8, 3))
EXACT = MU + SIGMA * X0


def _err(solver, steps, field=gaussian_ot_field, exact=EXACT, **kw):
    x1, nfe = jax.jit(lambda x: sampling.solve(field, x, solver=solver, steps=steps, **kw))(X0)
    return float(jnp.max(jnp.abs(x1 - exact))), int(nfe)


def cubic_field(t, x):
    """dx/dt = -(1 + t) x^3, solved by x(1) = x0 / sqrt(1 + 3 x0^2). (The affine Gaussian OT field above
    is so regular that midpoint super-converges on it; this nonlinear one shows the textbook orders.)"""
    return -(1.0 + t) * x**3


@pytest.mark.parametrize("solver,order", [("euler", 1), ("midpoint", 2), ("heun", 2)])
def test_fixed_step_convergence_order(solver, order):
    exact = X0 / jnp.sqrt(1.0 + 3.0 * X0**2)
    errs = [_err(solver, n, cubic_field, exact)[0] for n in (32, 64, 128)]
    rates = [np.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert errs[2] < errs[1] < errs[0]
    for r in rates:
        assert abs(r - order) < 0.3, (solver, errs, rates)


@pytest.mark.parametrize("solver,steps,tol", [("euler", 64, 4e-2), ("midpoint", 16, 2e-3), ("heun", 16, 5e-3)])
def test_reaches_gaussian_ot_endpoint(solver, steps, tol):
    """Integrating the exact OT field from noise lands on the closed-form data sample MU + SIGMA x0."""
    assert _err(solver, steps)[0] < tol


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun"])
def test_fixed_step_nfe(solver):
    for steps in (3, 10):
        _, nfe = _err(solver, steps)
        assert nfe == steps * {"euler": 1, "midpoint": 2, "heun": 2}[solver] == sampling.expected_nfe(solver, steps)


def _counted_solve(solver, steps, **kw):
    calls = []

    def field(t, x):
        jax.debug.callback(lambda: calls.append(1))
        return gaussian_ot_field(t, x)

    x1, nfe = jax.jit(lambda x: sampling.solve(field, x, solver=solver, steps=steps, **kw))(X0)
    jax.block_until_ready(x1)
    return x1, int(nfe), len(calls)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun"])
def test_reported_nfe_equals_counted_evaluations(solver):
    _, nfe, counted = _counted_solve(solver, 7)
    assert nfe == counted


def test_dopri5_adaptive_accuracy_and_nfe():
    errs = []
    for tol in (1e-3, 1e-6):
        x1, nfe, counted = _counted_solve("dopri5", 4, rtol=tol, atol=tol)
        assert nfe == counted, "reported NFE must count every evaluation, rejected steps included"
        errs.append(float(jnp.max(jnp.abs(x1 - EXACT))))
    assert errs[1] < 1e-4 and errs[1] < errs[0] / 100


# ---------------------------------------------------------------- with a real flow transformer


@pytest.fixture(scope="module")
def tiny_model():
    from configs.stage2_tiny import get_config
    from musicflow_jax.models.transformer import FlowTransformer

    cfg = get_config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=2))
    return cfg, FlowTransformer(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny_student(tiny_model):
    """tiny_model as a few-step student (model.interval), its teacher's weights loaded: the interval embedding's
    output layer starts at zero."""
    from musicflow_jax.models.transformer import FlowTransformer

    cfg, teacher = tiny_model
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, interval=True))
    student = FlowTransformer(cfg, rngs=nnx.Rngs(1))
    nnx.update(student, nnx.state(teacher))
    return cfg, student


def test_a_student_starts_as_its_teacher(tiny_model, tiny_student):
    from musicflow_jax.core.flow import FlowInput

    (cfg, teacher), (_, student) = tiny_model, tiny_student
    k = jax.random.split(jax.random.key(2), 4)
    b, t, d = 2, 12, cfg.model.feature_dim
    inp = FlowInput(jax.random.normal(k[0], (b, t, d)), jnp.zeros((b, t, d)), jnp.array([0.2, 0.7]),
                    jax.random.normal(k[1], (b, 3, cfg.text.dim)), jnp.ones((b, 3), bool),
                    jax.random.normal(k[2], (b, t, cfg.model.cond_dim)))
    want = teacher(inp)
    for s_b in (None, jnp.array([0.2, 0.7]), jnp.array([1.0, 0.9])):
        np.testing.assert_array_equal(student(inp._replace(s_b=s_b)), want)
    with pytest.raises(ValueError, match="without model.interval"):
        teacher(inp._replace(s_b=jnp.array([0.5, 0.9])))


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_average_steps_land_on_the_ode_endpoint(steps):
    """With the exact average velocity of the Gaussian OT flow, any number of equal jumps lands on the exact
    endpoint MU + SIGMA x0 (what dopri5 reaches in many evaluations); NFE = steps."""
    def std(t):
        return jnp.sqrt((1 - t) ** 2 + (t * SIGMA) ** 2)

    def average(t, x, s):
        return (s * MU + (x - t * MU) * std(s) / std(t) - x) / (s - t)

    x1, nfe = jax.jit(lambda x: sampling.average_steps(average, x, steps))(X0)
    np.testing.assert_allclose(x1, EXACT, atol=1e-5)
    assert int(nfe) == steps


@pytest.mark.parametrize("solver,cfg_scale", [("euler", 1.0), ("midpoint", 3.0), ("dopri5", 2.0), ("average", 1.0)])
def test_in_context_frames_unchanged(tiny_model, tiny_student, solver, cfg_scale):
    cfg, model = tiny_student if solver == "average" else tiny_model
    b, t, d = 2, 24, cfg.model.feature_dim
    k = jax.random.split(jax.random.key(1), 4)
    ctx = jax.random.normal(k[0], (b, t, d))
    gen_mask = jnp.zeros((b, t), bool).at[0, 10:18].set(True).at[1, 12:].set(True)  # infill / continuation
    text = jax.random.normal(k[1], (b, 6, cfg.text.dim))
    text_mask = jnp.ones((b, 6), bool)
    cond = jax.random.normal(k[2], (b, t, cfg.model.cond_dim))
    x1, nfe = sampling.sample(model, k[3], text_emb=text, text_mask=text_mask, cond=cond, ctx=ctx, gen_mask=gen_mask,
                              solver=solver, steps=4, cfg_scale=cfg_scale, rtol=1e-3, atol=1e-3)
    x1, ctx, gm = np.asarray(x1), np.asarray(ctx), np.asarray(gen_mask)
    np.testing.assert_array_equal(x1[~gm], ctx[~gm])  # bit-exact context
    assert np.all(np.abs(x1[gm] - ctx[gm]).sum(-1) > 0)
    assert np.isfinite(x1).all()
    if solver != "dopri5":
        assert int(nfe) == sampling.expected_nfe(solver, 4)


def test_sample_is_deterministic_and_seed_dependent(tiny_model):
    cfg, model = tiny_model
    text = jnp.ones((1, 4, cfg.text.dim))
    mask = jnp.ones((1, 4), bool)
    cond = jnp.zeros((1, 16, cfg.model.cond_dim))
    kw = dict(text_emb=text, text_mask=mask, cond=cond, frames=16, feature_dim=cfg.model.feature_dim, steps=3)
    a, _ = sampling.sample(model, jax.random.key(5), **kw)
    b, _ = sampling.sample(model, jax.random.key(5), **kw)
    c, _ = sampling.sample(model, jax.random.key(6), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


class GaussianOTModel(nnx.Module):
    """A stand-in network whose velocity is the exact Gaussian OT field above, element by element (no parameters;
    `sample` jits it like a trained stage)."""

    def __call__(self, inp):
        return gaussian_ot_field(inp.t_b[:, None, None], inp.x_t_btd)


@pytest.mark.parametrize("temperature", [0.25, 0.6, 1.5])
def test_temperature_scales_the_starting_noise(temperature):
    """The exact OT flow maps x0 to MU + SIGMA x0, so starting from temperature * x0 lands on MU + SIGMA temperature
    x0: the same noise draw, its deviation from the data mean scaled by the temperature (closed form); context frames
    come back bit-exact and the generated ones follow the same closed form."""
    model = GaussianOTModel()
    b, t, d = 3, 20, 4
    kw = dict(text_emb=jnp.zeros((b, 2, 8)), text_mask=jnp.ones((b, 2), bool), frames=t, feature_dim=d,
              solver="midpoint", steps=16, cfg_scale=1.0, sigma_min=0.0)
    unit, _ = sampling.sample(model, jax.random.key(3), **kw)
    hot, _ = sampling.sample(model, jax.random.key(3), temperature=temperature, **kw)
    z = (np.asarray(unit) - MU) / SIGMA  # the noise draw itself (the ODE's error < 2e-3 at 16 midpoint steps)
    np.testing.assert_allclose(np.asarray(hot), MU + SIGMA * temperature * z, atol=3e-3 * max(temperature, 1.0))
    assert abs(float(np.std(np.asarray(hot))) / SIGMA - temperature) < 0.1 * temperature  # 240 draws
    ctx = jnp.full((b, t, d), 7.0)
    gen = jnp.zeros((b, t), bool).at[:, 8:].set(True)
    kw_ctx = {k: v for k, v in kw.items() if k not in ("frames", "feature_dim")}
    x1, _ = sampling.sample(model, jax.random.key(3), ctx=ctx, gen_mask=gen, temperature=temperature, **kw_ctx)
    x1, g = np.asarray(x1), np.asarray(gen)
    np.testing.assert_array_equal(x1[~g], 7.0)
    np.testing.assert_allclose(x1[g], (MU + SIGMA * temperature * z)[g], atol=3e-3 * max(temperature, 1.0))


def test_temperature_one_is_the_untempered_sampler(tiny_model):
    """temperature=1 is bit for bit the sampler without it (the default every stage had before the option)."""
    cfg, model = tiny_model
    kw = dict(text_emb=jnp.ones((2, 4, cfg.text.dim)), text_mask=jnp.ones((2, 4), bool),
              cond=jnp.zeros((2, 16, cfg.model.cond_dim)), frames=16, feature_dim=cfg.model.feature_dim, steps=3)
    a, _ = sampling.sample(model, jax.random.key(5), **kw)
    b, _ = sampling.sample(model, jax.random.key(5), temperature=1.0, **kw)
    c, _ = sampling.sample(model, jax.random.key(5), temperature=0.7, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
