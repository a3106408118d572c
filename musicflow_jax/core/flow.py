"""The one flow-matching convention of the project: pure functions, no modules, no state.

Convention (Lipman et al. 2023, "optimal transport" conditional path; Voicebox; MusicFlow sec. 3.1):
    t = 0 is noise, t = 1 is data.  x0 ~ N(0, I) noise, x1 data, sigma_min = s.
    x_t      = (1 - (1 - s) t) x0 + t x1
    u (target velocity) = d x_t / dt = x1 - (1 - s) x0          (independent of t)
Masked training (Voicebox): a binary mask m over frames (True = frame to generate). The network sees
x_t everywhere, the context ctx = x1 * (1 - m) and the conditions, and the loss counts only masked,
valid (unpadded) frames: L = sum_{b,t,d} m (v - u)^2 / (sum_{b,t} m * D).
Classifier-free guidance: during training the text is dropped (text mask all False) with probability
p_drop_text, and the context is dropped with it (Voicebox drops both), or alone with p_drop_context.
At sampling time v = v_uncond + w (v_cond - v_uncond), where "uncond" = no text and no context. A beat grid
(FlowInput.beat_btc, model.beat) comes from the caption's tempo, so it is dropped (zeroed) wherever the text is.
With text.meta (encoders/meta.py) the batch marks the tempo / key tokens ("text_is_meta"), and the caption's own
tokens alone are dropped with p_drop_caption, so the stage learns to follow the tokens whatever the wording.

Few-step students (MeanFlow, Geng et al. 2025, in this convention): a network u(x_t, t, s) given the interval end s
(FlowInput.s_b; None = s = t, the velocity itself) predicts the *average* velocity of the ODE over [t, s], so one
step x_s = x_t + (s - t) u(x_t, t, s) lands where the ODE goes. Differentiating (s - t) u = int_t^s v along the
trajectory gives the identity a student is trained on, with d/dt the total derivative (x moving with v, s fixed):
    u(x_t, t, s) = v(x_t, t) + (s - t) d/dt u(x_t, t, s),    d/dt u = (d_x u) v + d_t u   (one JVP)
`average_velocity_target` computes its right side; v is the (guided) teacher's velocity when distilling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from musicflow_jax.core.config import DISTILL_METHODS, FlowConfig

Array = jax.Array


class FlowInput(NamedTuple):
    """What the network sees for one velocity evaluation v(x_t, t | ctx, cond, text); a pytree.

    x_t, ctx: (B, T, D) (ctx = 0 on generated and padded frames); t: (B,); text: (B, L, E) frozen T5 output with
    its mask (B, L) bool (all False = text dropped); cond: (B, T, C) frame-aligned condition (stage 2: upsampled
    semantic features) or None; frame_mask: (B, T) bool, True on real frames, or None (all real); beat: (B, T, 5) the
    caption's beat grid (model.beat, core/beat.py) or None - text-derived, so it is dropped with the text."""

    x_t_btd: Array
    ctx_btd: Array
    t_b: Array
    text_bld: Array
    text_mask_bl: Array
    cond_btc: Array | None = None
    frame_mask_bt: Array | None = None
    s_b: Array | None = None  # the interval end of an average-velocity student (model.interval); None: s = t
    beat_btc: Array | None = None


ApplyFn = Callable[[FlowInput], Array]  # the network: FlowInput -> v_btd


def _bcast(t_b: Array, like: Array) -> Array:
    return t_b.reshape(t_b.shape + (1,) * (like.ndim - t_b.ndim))


def ot_path(x0: Array, x1: Array, t_b: Array, sigma_min: float) -> Array:
    """x_t = (1 - (1 - sigma_min) t) x0 + t x1, with t of shape (B,) broadcast over the rest."""
    t = _bcast(t_b, x1).astype(x1.dtype)
    return (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1


def ot_target(x0: Array, x1: Array, sigma_min: float) -> Array:
    """The conditional velocity u = d x_t / dt = x1 - (1 - sigma_min) x0."""
    return x1 - (1.0 - sigma_min) * x0


def sample_time(key: Array, batch: int, cfg: FlowConfig) -> Array:
    """t in (0, 1): uniform, or logit-normal sigmoid(N(mean, std)) (SD3-style, more mass mid-path)."""
    if cfg.time_sampler == "uniform":
        return jax.random.uniform(key, (batch,), jnp.float32)
    if cfg.time_sampler == "logit_normal":
        return jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * jax.random.normal(key, (batch,), jnp.float32))
    raise ValueError(f"unknown flow.time_sampler {cfg.time_sampler!r}")


def sample_span_mask(key: Array, frame_mask_bt: Array, cfg: FlowConfig) -> Array:
    """Voicebox span mask: one contiguous span covering U(min_frac, max_frac) of each example's valid
    frames (at least one frame), at a uniform random start; with probability p_full_mask the whole
    example is masked (pure text-to-music). Returns bool (B, T), always False on padding."""
    frame_mask_bt = frame_mask_bt.astype(bool)
    b, n_t = frame_mask_bt.shape
    k_frac, k_start, k_full = jax.random.split(key, 3)
    length_b = frame_mask_bt.sum(axis=1)
    frac_b = jax.random.uniform(k_frac, (b,), minval=cfg.mask_min_frac, maxval=cfg.mask_max_frac)
    span_b = jnp.clip(jnp.round(frac_b * length_b).astype(jnp.int32), 1, jnp.maximum(length_b, 1))
    start_b = jnp.floor(jax.random.uniform(k_start, (b,)) * (length_b - span_b + 1)).astype(jnp.int32)
    pos_bt = jnp.arange(n_t)[None, :]
    span_bt = (pos_bt >= start_b[:, None]) & (pos_bt < (start_b + span_b)[:, None])
    full_b = jax.random.bernoulli(k_full, cfg.p_full_mask, (b,))
    return jnp.where(full_b[:, None], True, span_bt) & frame_mask_bt


def sample_cfg_drop(key: Array, batch: int, cfg: FlowConfig) -> tuple[Array, Array]:
    """(drop_text_b, drop_ctx_b): text dropped w.p. p_drop_text (the context with it); otherwise the
    context alone is dropped w.p. p_drop_context."""
    k_text, k_ctx = jax.random.split(key)
    drop_text_b = jax.random.bernoulli(k_text, cfg.p_drop_text, (batch,))
    drop_ctx_b = drop_text_b | jax.random.bernoulli(k_ctx, cfg.p_drop_context, (batch,))
    return drop_text_b, drop_ctx_b


def caption_keep(key: Array, is_meta_bl: Array, cfg: FlowConfig) -> Array:
    """(B, L) bool: False on the caption's own tokens of the examples whose caption is dropped (w.p.
    p_drop_caption), True elsewhere; the tempo / key tokens (is_meta) are always kept."""
    drop_b = jax.random.bernoulli(key, cfg.p_drop_caption, is_meta_bl.shape[:1])
    return ~drop_b[:, None] | is_meta_bl.astype(bool)


def masked_loss(v_btd: Array, u_btd: Array, loss_mask_bt: Array, axis: int | None = None) -> Array:
    """Mean squared error over the frames where loss_mask is True (and all feature dims); `axis=1` keeps the
    batch axis (one mean per example)."""
    m_bt = loss_mask_bt.astype(jnp.float32)
    se_bt = jnp.sum(jnp.square(v_btd.astype(jnp.float32) - u_btd.astype(jnp.float32)), axis=-1)
    return jnp.sum(se_bt * m_bt, axis=axis) / (jnp.maximum(jnp.sum(m_bt, axis=axis), 1.0) * v_btd.shape[-1])


def per_example_loss(v_btd: Array, u_btd: Array, loss_mask_bt: Array) -> Array:
    """masked_loss computed separately for each example: (B,)."""
    return masked_loss(v_btd, u_btd, loss_mask_bt, axis=1)


def context_from_mask(x1_btd: Array, gen_mask_bt: Array, frame_mask_bt: Array | None = None) -> Array:
    """ctx = x1 on frames that are neither generated nor padding, 0 elsewhere."""
    keep_bt = ~gen_mask_bt.astype(bool)
    if frame_mask_bt is not None:
        keep_bt = keep_bt & frame_mask_bt.astype(bool)
    return jnp.where(keep_bt[..., None], x1_btd, 0.0)


def flow_loss(apply_fn: ApplyFn, key: Array, batch: dict[str, Array], cfg: FlowConfig) -> tuple[Array, dict[str, Any]]:
    """Masked conditional flow-matching loss for one batch (see module docstring).

    batch: "x1" (B,T,D), "frame_mask" (B,T), "text_emb" (B,L,E), "text_mask" (B,L), optional "cond" (B,T,C) and
    "beat" (B,T,5) (zeroed with the text).
    """
    x1_btd = batch["x1"].astype(jnp.float32)
    b = x1_btd.shape[0]
    frame_mask_bt = batch.get("frame_mask")
    if frame_mask_bt is None:
        frame_mask_bt = jnp.ones(x1_btd.shape[:2], bool)
    frame_mask_bt = frame_mask_bt.astype(bool)
    k_t, k_noise, k_mask, k_drop = jax.random.split(key, 4)
    t_b = sample_time(k_t, b, cfg)
    x0_btd = jax.random.normal(k_noise, x1_btd.shape, jnp.float32)
    x_t_btd = ot_path(x0_btd, x1_btd, t_b, cfg.sigma_min)
    u_btd = ot_target(x0_btd, x1_btd, cfg.sigma_min)
    gen_mask_bt = sample_span_mask(k_mask, frame_mask_bt, cfg)
    drop_text_b, drop_ctx_b = sample_cfg_drop(k_drop, b, cfg)
    ctx_btd = jnp.where(drop_ctx_b[:, None, None], 0.0, context_from_mask(x1_btd, gen_mask_bt, frame_mask_bt))
    text_mask_bl = batch["text_mask"].astype(bool) & ~drop_text_b[:, None]
    if cfg.p_drop_caption > 0.0 and "text_is_meta" in batch:  # its own key: configs without it draw as before
        text_mask_bl = text_mask_bl & caption_keep(jax.random.fold_in(k_drop, 1), batch["text_is_meta"], cfg)
    text_bld = jnp.where(text_mask_bl[..., None], batch["text_emb"], 0.0)
    beat_btc = batch.get("beat")
    if beat_btc is not None:
        beat_btc = jnp.where(drop_text_b[:, None, None], 0.0, beat_btc)
    v_btd = apply_fn(FlowInput(x_t_btd, ctx_btd, t_b, text_bld, text_mask_bl, batch.get("cond"), frame_mask_bt,
                               beat_btc=beat_btc))
    loss = masked_loss(v_btd, u_btd, gen_mask_bt)
    aux = {
        "loss_per_example": per_example_loss(v_btd, u_btd, gen_mask_bt),
        "t": t_b,
        "mask_frac": gen_mask_bt.sum(1) / jnp.maximum(frame_mask_bt.sum(1), 1),
    }
    return loss, aux


def average_velocity_target(u_fn: Callable[[Array, Array], Array], x_t_btd: Array, t_b: Array, s_b: Array,
                            v_btd: Array) -> tuple[Array, Array]:
    """(u(x_t, t, s), the MeanFlow target v + (s - t) d/dt u under stop_gradient) for `u_fn(x, t) -> u` at fixed s:
    d/dt u is the JVP of u_fn along (v, 1)."""
    u_btd, du_dt_btd = jax.jvp(u_fn, (x_t_btd, t_b), (v_btd, jnp.ones_like(t_b)))
    target = v_btd + _bcast(s_b - t_b, v_btd) * du_dt_btd
    return u_btd, jax.lax.stop_gradient(target)


def sample_interval(key: Array, batch: int, p_instant: float, cfg: FlowConfig, *, jumps: int = 1,
                    p_grid: float = 0.0) -> tuple[Array, Array]:
    """(t_b, s_b) with 0 <= t <= s <= 1: the two of two times drawn by `sample_time`, sorted; w.p. p_instant s = t
    (the plain flow-matching case, which anchors u to the velocity). p_grid > 0: that share of the other intervals is
    one of the few-step sampler's `jumps` equal jumps [k / jumps, (k + 1) / jumps], k uniform (the intervals the
    student will be asked for)."""
    k_a, k_b, k_eq = jax.random.split(key, 3)
    a_b, b_b = sample_time(k_a, batch, cfg), sample_time(k_b, batch, cfg)
    t_b, s_b = jnp.minimum(a_b, b_b), jnp.maximum(a_b, b_b)
    instant_b = jax.random.bernoulli(k_eq, p_instant, (batch,))
    if p_grid > 0.0:  # its own key: the other draws stay those of p_grid = 0
        k_on, k_k = jax.random.split(jax.random.fold_in(key, 1))
        jump_b = jax.random.randint(k_k, (batch,), 0, jumps).astype(t_b.dtype)
        on_b = jax.random.bernoulli(k_on, p_grid, (batch,)) & ~instant_b
        t_b, s_b = jnp.where(on_b, jump_b / jumps, t_b), jnp.where(on_b, (jump_b + 1) / jumps, s_b)
    return t_b, jnp.where(instant_b, t_b, s_b)


def guided_velocity(v_cond: Array, v_uncond: Array, w: float | Array) -> Array:
    """Classifier-free guidance: v = v_uncond + w (v_cond - v_uncond); w = 1 is the conditional field."""
    return v_uncond + w * (v_cond - v_uncond)


def guided_apply(apply_fn: ApplyFn, inp: FlowInput, cfg_scale: float) -> Array:
    """One guided velocity evaluation (the sampler's and the distillation teacher's): for cfg_scale != 1 one forward
    on the doubled batch [cond; uncond] - uncond drops the text, the beat grid and the context (as training's CFG
    dropout does), keeps the frame-aligned condition - combined by `guided_velocity`; cfg_scale = 1: the conditional
    forward alone."""
    if cfg_scale == 1.0:
        return apply_fn(inp)
    b = inp.x_t_btd.shape[0]
    two = lambda a: None if a is None else jnp.concatenate([a, a])  # noqa: E731
    v2 = apply_fn(FlowInput(two(inp.x_t_btd), jnp.concatenate([inp.ctx_btd, jnp.zeros_like(inp.ctx_btd)]),
                            two(inp.t_b), jnp.concatenate([inp.text_bld, jnp.zeros_like(inp.text_bld)]),
                            jnp.concatenate([inp.text_mask_bl, jnp.zeros_like(inp.text_mask_bl)]), two(inp.cond_btc),
                            two(inp.frame_mask_bt), two(inp.s_b),
                            None if inp.beat_btc is None else jnp.concatenate([inp.beat_btc,
                                                                               jnp.zeros_like(inp.beat_btc)])))
    return guided_velocity(v2[:b], v2[b:], cfg_scale)


def distill_loss(student_fn: ApplyFn, teacher_fn: ApplyFn, key: Array, batch: dict[str, Array], cfg: FlowConfig, *,
                 method: str, cfg_scale: float, p_instant: float, teacher_steps: int, adaptive_p: float = 0.0,
                 jumps: int = 1, p_grid: float = 0.0) -> tuple[Array, dict[str, Any]]:
    """A few-step student's loss on one batch: its average velocity u(x_t, t, s) against the guided teacher's over
    [t, s] on the masked span (the teacher's guidance is built into the student, which always sees text and context).

    x_t is on the OT path of the data (as in `flow_loss`, same span masks); on context frames the state moves with the
    context's exact OT velocity (the sampler's convention). Targets, under stop_gradient:
      meanflow:   v + (s - t) d/dt u   (the identity above; one guided teacher evaluation and one JVP of the student)
      shortcut:   the mean of the student's own two half jumps, [t, m] then [m, s] with m = (t + s) / 2 (Frans et al.
                  2024: self-consistency; one guided teacher evaluation for s = t, two student evaluations)
      trajectory: the mean velocity of `teacher_steps` guided midpoint steps of the teacher from t to s (= its jump
                  (x_s - x_t) / (s - t), without the division; 2 teacher evaluations per step; biased by the
                  teacher's discretisation over long intervals)
    The s = t case (share p_instant) targets v itself in all three. adaptive_p > 0: each example's squared error e
    is weighted by sg(1 / (e + 1e-3)^p) (MeanFlow's adaptive loss; p = 1 ~ log e), which keeps the heavy-tailed
    targets of a real network's JVP from dominating; "loss_per_example" stays the unweighted e. p_grid: the share of
    s != t intervals that are the sampler's `jumps` equal jumps (`sample_interval`).
    """
    x1_btd = batch["x1"].astype(jnp.float32)
    b = x1_btd.shape[0]
    frame_mask_bt = batch.get("frame_mask")
    frame_mask_bt = jnp.ones(x1_btd.shape[:2], bool) if frame_mask_bt is None else frame_mask_bt.astype(bool)
    k_t, k_noise, k_mask = jax.random.split(key, 3)
    t_b, s_b = sample_interval(k_t, b, p_instant, cfg, jumps=jumps, p_grid=p_grid)
    x0_btd = jax.random.normal(k_noise, x1_btd.shape, jnp.float32)
    x_t_btd = ot_path(x0_btd, x1_btd, t_b, cfg.sigma_min)
    gen_mask_bt = sample_span_mask(k_mask, frame_mask_bt, cfg)
    ctx_btd = context_from_mask(x1_btd, gen_mask_bt, frame_mask_bt)
    ctx_velocity_btd = ot_target(x0_btd, x1_btd, cfg.sigma_min)
    text_mask_bl = batch["text_mask"].astype(bool)
    text_bld = jnp.where(text_mask_bl[..., None], batch["text_emb"], 0.0)
    cond_btc, beat_btc = batch.get("cond"), batch.get("beat")

    def guided(x_btd: Array, tt_b: Array) -> Array:  # the teacher's guided field (the sampler's)
        inp = FlowInput(x_btd, ctx_btd, tt_b, text_bld, text_mask_bl, cond_btc, frame_mask_bt, beat_btc=beat_btc)
        v_btd = guided_apply(teacher_fn, inp, cfg_scale)
        return jnp.where(gen_mask_bt[..., None], v_btd.astype(jnp.float32), ctx_velocity_btd)

    v_btd = jax.lax.stop_gradient(guided(x_t_btd, t_b))

    def student(x_btd: Array, tt_b: Array) -> Array:
        return student_fn(FlowInput(x_btd, ctx_btd, tt_b, text_bld, text_mask_bl, cond_btc, frame_mask_bt, s_b,
                                    beat_btc))

    if method == "meanflow":
        u_btd, target_btd = average_velocity_target(student, x_t_btd, t_b, s_b, v_btd)
    elif method == "shortcut":
        m_b = 0.5 * (t_b + s_b)

        def half(x_btd: Array, a_b: Array, z_b: Array) -> Array:
            u = student_fn(FlowInput(x_btd, ctx_btd, a_b, text_bld, text_mask_bl, cond_btc, frame_mask_bt, z_b,
                                     beat_btc))
            return jnp.where(gen_mask_bt[..., None], u.astype(jnp.float32), ctx_velocity_btd)

        u1_btd = half(x_t_btd, t_b, m_b)
        u2_btd = half(x_t_btd + _bcast(m_b - t_b, x_t_btd) * u1_btd, m_b, s_b)
        instant_b = (s_b == t_b)[:, None, None]
        target_btd = jax.lax.stop_gradient(jnp.where(instant_b, v_btd, 0.5 * (u1_btd + u2_btd)))
        u_btd = student(x_t_btd, t_b)
    elif method == "trajectory":
        h_b = (s_b - t_b) / teacher_steps
        x_btd, total_btd = x_t_btd, jnp.zeros_like(x_t_btd)
        for i in range(teacher_steps):  # a few steps, unrolled; the first starts from v (already evaluated)
            t_i = t_b + i * h_b
            v1 = v_btd if i == 0 else guided(x_btd, t_i)
            v2 = guided(x_btd + _bcast(0.5 * h_b, x_btd) * v1, t_i + 0.5 * h_b)
            x_btd, total_btd = x_btd + _bcast(h_b, x_btd) * v2, total_btd + v2
        target_btd = jax.lax.stop_gradient(total_btd / teacher_steps)
        u_btd = student(x_t_btd, t_b)
    else:
        raise ValueError(f"unknown distill.method {method!r}; choose one of {DISTILL_METHODS}")
    e_b = per_example_loss(u_btd, target_btd, gen_mask_bt)
    if adaptive_p > 0.0:
        loss = jnp.mean(jax.lax.stop_gradient(1.0 / (e_b + 1e-3) ** adaptive_p) * e_b)
    else:
        loss = masked_loss(u_btd, target_btd, gen_mask_bt)
    return loss, {"loss_per_example": e_b, "t": t_b, "interval": s_b - t_b}
