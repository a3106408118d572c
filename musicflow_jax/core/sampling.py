"""Sampling the flow ODE dx/dt = v(x, t) from t=0 (noise) to t=1 (data) with diffrax.

Solvers: "euler" (1 NFE/step), "midpoint" and "heun" (2 NFE/step) at fixed steps, and "dopri5"
(adaptive, rtol/atol); "average" (1 NFE/step) is for few-step students (model.interval): each step jumps by the
predicted average velocity over the step, x_s = x_t + (s - t) u(x_t, t, s) (flow.py), so 1-2 steps suffice.
NFE = evaluations of the vector field; with classifier-free guidance each evaluation runs the network once on a
doubled batch (conditional + unconditional halves).

In-context mode (continuation, infilling): frames where `gen_mask` is False are context. On them the
state follows the exact conditional OT path of the known data, x_t = (1-(1-s)t) x0 + t ctx (the
same distribution the network saw in training), and the returned sample holds the context frames
bit-for-bit; only the masked frames are generated.

Temperature: the generated frames start from x0 ~ N(0, temperature^2 I) instead of the N(0, I) the flow was trained
from (Glow-TTS's and Matcha-TTS's noise scale: Matcha samples at 0.667). The ODE's map carries the smaller noise to
samples nearer the high-density paths of the data, closer to the typical sample (and in general less diverse; in a
cascade the earlier stage's output still varies). The context frames keep unit noise, so their path stays the one
training drew.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
from flax import nnx

from musicflow_jax.core.flow import FlowInput, guided_apply, ot_target
from musicflow_jax.core.noise import frame_random

Array = jax.Array
VectorField = Callable[[Array, Array], Array]  # (t scalar, x) -> v

SOLVERS = ("euler", "midpoint", "heun", "dopri5", "average")
_FIXED_EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "average": 1}
_DOPRI5_EVALS_PER_STEP = 6  # 7 stages, first-same-as-last: the 7th is the next step's 1st
MAX_ADAPTIVE_STEPS = 4096  # dopri5's default step limit (accepted + rejected steps)


def _diffrax_solver(name: str) -> diffrax.AbstractSolver:
    return {"euler": diffrax.Euler, "midpoint": diffrax.Midpoint, "heun": diffrax.Heun, "dopri5": diffrax.Dopri5}[
        name
    ]()


def solve(
    vector_field: VectorField,
    x0: Array,
    *,
    solver: str = "midpoint",
    steps: int = 16,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t0: float = 0.0,
    t1: float = 1.0,
    max_steps: int = MAX_ADAPTIVE_STEPS,
) -> tuple[Array, Array]:
    """Integrate dx/dt = vector_field(t, x) from t0 to t1. Returns (x(t1), nfe as an int32 scalar).

    Fixed-step solvers take exactly `steps` steps; dopri5 starts from dt = (t1-t0)/steps and adapts.
    """
    if solver not in SOLVERS or solver == "average":
        raise ValueError(f"unknown ODE solver {solver!r}; choose one of {SOLVERS[:-1]} ('average' is a student's: "
                         "average_steps)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    term = diffrax.ODETerm(lambda t, x, args: vector_field(t, x))
    dt0 = (t1 - t0) / steps
    adaptive = solver == "dopri5"
    controller = diffrax.PIDController(rtol=rtol, atol=atol) if adaptive else diffrax.ConstantStepSize()
    sol = diffrax.diffeqsolve(
        term,
        _diffrax_solver(solver),
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=x0,
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(t1=True),
        max_steps=max_steps if adaptive else steps,
        throw=adaptive,
    )
    if adaptive:
        nfe = 1 + _DOPRI5_EVALS_PER_STEP * jnp.asarray(sol.stats["num_steps"], jnp.int32)
    else:
        nfe = jnp.asarray(expected_nfe(solver, steps), jnp.int32)
    return sol.ys[0], nfe


def average_steps(field: Callable[..., Array], x0: Array, steps: int) -> tuple[Array, Array]:
    """A few-step student's sampler: `steps` equal jumps x_s = x_t + (s - t) field(t, x_t, s) from 0 to 1."""
    ts = jnp.linspace(0.0, 1.0, steps + 1)

    def jump(k: Array, x: Array) -> Array:
        return x + (ts[k + 1] - ts[k]) * field(ts[k], x, ts[k + 1])

    return jax.lax.fori_loop(0, steps, jump, x0), jnp.asarray(steps, jnp.int32)


def expected_nfe(solver: str, steps: int) -> int:
    """NFE of a fixed-step solve (dopri5's depends on the accepted/rejected steps; see `solve`)."""
    return _FIXED_EVALS_PER_STEP[solver] * steps


def max_nfe(solver: str, steps: int, max_steps: int = MAX_ADAPTIVE_STEPS) -> int:
    """The most evaluations a solve can take: a fixed-step solver's NFE, or dopri5's at its step limit."""
    return 1 + _DOPRI5_EVALS_PER_STEP * max_steps if solver == "dopri5" else expected_nfe(solver, steps)


def adaptive_steps_within(evals: int) -> int:
    """The most dopri5 steps whose worst case (`max_nfe`) is at most `evals` evaluations (0 if none fits)."""
    return max((int(evals) - 1) // _DOPRI5_EVALS_PER_STEP, 0)


def guided_field(
    model: nnx.Module,
    x0_btd: Array,
    *,
    text_emb: Array,
    text_mask: Array,
    cond: Array | None,
    ctx: Array,
    gen_mask: Array,
    frame_mask: Array,
    cfg_scale: float,
    sigma_min: float,
    beat: Array | None = None,
) -> VectorField:
    """The sampling vector field: CFG-guided network velocity on generated frames, the exact OT
    velocity of the context on context frames. `field(t, x, s)` with an interval end s: a student's average velocity
    over [t, s] (the context's is the same: its OT velocity is constant in t)."""
    b = x0_btd.shape[0]
    ctx_velocity = ot_target(x0_btd, ctx, sigma_min)

    def field(t: Array, x_btd: Array, s: Array | None = None) -> Array:
        s_b = None if s is None else jnp.full((b,), s, jnp.float32)
        inp = FlowInput(x_btd, ctx, jnp.full((b,), t, jnp.float32), text_emb, text_mask, cond, frame_mask, s_b, beat)
        v = guided_apply(model, inp, cfg_scale)  # CFG: one forward on [cond; uncond]
        return jnp.where(gen_mask[..., None], v.astype(jnp.float32), ctx_velocity)

    return field


_EVAL_SINK: list[Callable[[int], None] | None] = [None]  # where the running `sample` call reports evaluations
_EVAL_LOCK = threading.Lock()  # one reporting `sample` call at a time (the sink is process-wide)


def _report_eval(_t: Array) -> None:
    sink = _EVAL_SINK[0]
    if sink is not None:
        sink(1)


def _reporting(field: VectorField) -> VectorField:
    """`field` that tells the host of each evaluation (a progress bar that moves per ODE step)."""

    def wrapped(t: Array, x: Array, *s: Array) -> Array:
        jax.debug.callback(_report_eval, t)
        return field(t, x, *s)

    return wrapped


@functools.partial(nnx.jit, static_argnames=("solver", "steps", "cfg_scale", "sigma_min", "rtol", "atol", "report",
                                             "max_steps"))
def _sample_jit(model, key, rows, text_emb, text_mask, cond, ctx, gen_mask, frame_mask, beat, temperature, *, solver,
                steps, cfg_scale, sigma_min, rtol, atol, report, max_steps):
    b, t, d = ctx.shape
    x0 = frame_random(lambda k, shape: jax.random.normal(k, shape, jnp.float32), key, rows, t, d)  # core/noise.py
    x0 = jnp.where(gen_mask[..., None], x0 * temperature, x0)  # the context's path keeps training's unit noise
    field = guided_field(model, x0, text_emb=text_emb, text_mask=text_mask, cond=cond, ctx=ctx, gen_mask=gen_mask,
                         frame_mask=frame_mask, cfg_scale=cfg_scale, sigma_min=sigma_min, beat=beat)
    if report:
        field = _reporting(field)
    if solver == "average":
        x1, nfe = average_steps(field, x0, steps)
    else:
        x1, nfe = solve(field, x0, solver=solver, steps=steps, rtol=rtol, atol=atol, max_steps=max_steps)
    x1 = jnp.where(gen_mask[..., None], x1, ctx)  # context frames: bit-exact
    return jnp.where(frame_mask[..., None], x1, 0.0), nfe


def sample(
    model: nnx.Module,
    key: Array,
    *,
    text_emb: Array,
    text_mask: Array,
    frames: int | None = None,
    feature_dim: int | None = None,
    frame_mask: Array | None = None,
    cond: Array | None = None,
    ctx: Array | None = None,
    gen_mask: Array | None = None,
    solver: str = "midpoint",
    steps: int = 16,
    cfg_scale: float = 1.0,
    sigma_min: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    on_eval: Callable[[int], None] | None = None,
    rows: Array | None = None,
    max_steps: int = MAX_ADAPTIVE_STEPS,
    beat: Array | None = None,
    temperature: float = 1.0,
) -> tuple[Array, Array]:
    """Generate (B, T, D) features with a flow transformer. Returns (x1_btd, nfe).

    Text-to-X: give `frames` and `feature_dim` (everything generated). In-context: give `ctx` (B,T,D)
    and `gen_mask` (B,T) True where frames are generated; ctx frames are returned unchanged. `frame_mask` (B,T)
    False marks padding (length buckets): those frames are not seen by the others and come back as 0. `on_eval(1)`
    is called on the host after each network evaluation (reporting calls run one at a time and block until done;
    executables with the callback are not written to JAX's persistent compilation cache).
    `beat` (B,T,5): the caption's beat grid for a stage with model.beat (core/beat.py; dropped in CFG's unconditional
    branch). The starting noise of row r, frame i comes from (key, rows[r], i) (default rows 0..B-1;
    buckets.frame_random), times `temperature` on the generated frames (module docstring; a traced value: changing it
    does not recompile).
    dopri5 stops with an error after `max_steps` steps (at most `max_nfe(solver, steps, max_steps)` evaluations).
    """
    b = text_emb.shape[0]
    if ctx is None:
        if frames is None or feature_dim is None:
            raise ValueError("sample() needs either ctx or both frames and feature_dim")
        ctx = jnp.zeros((b, frames, feature_dim), jnp.float32)
        gen_mask = jnp.ones((b, frames), bool)
    elif gen_mask is None:
        raise ValueError("sample() with ctx needs gen_mask (True = frames to generate)")
    if frame_mask is None:
        frame_mask = jnp.ones(ctx.shape[:2], bool)
    gen_mask = gen_mask.astype(bool) & frame_mask.astype(bool)
    ctx = jnp.where(gen_mask[..., None], 0.0, ctx.astype(jnp.float32))
    rows = jnp.arange(b, dtype=jnp.uint32) if rows is None else jnp.asarray(rows, jnp.uint32)
    if rows.shape != (b,):
        raise ValueError(f"rows must be ({b},), one id per batch row, got {rows.shape}")
    kw = dict(solver=solver, steps=steps, cfg_scale=float(cfg_scale), sigma_min=float(sigma_min), rtol=float(rtol),
              atol=float(atol), report=on_eval is not None,
              max_steps=int(max_steps) if solver == "dopri5" else MAX_ADAPTIVE_STEPS)  # one executable
    args = (model, key, rows, text_emb, text_mask.astype(bool), cond, ctx, gen_mask, frame_mask.astype(bool),
            None if beat is None else jnp.asarray(beat, jnp.float32), jnp.asarray(temperature, jnp.float32))
    if on_eval is None:
        return _sample_jit(*args, **kw)
    with _EVAL_LOCK:
        _EVAL_SINK[0] = on_eval
        try:
            return jax.block_until_ready(_sample_jit(*args, **kw))
        finally:
            _EVAL_SINK[0] = None
