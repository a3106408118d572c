"""The train state pytree both trainers use, its optimizer (AdamW + warmup schedule + global-norm clipping), the EMA
of the parameters, and the guarded update.

`TrainState` holds everything that changes during training (step, params, optimizer state, EMA of the params,
non-trainable model state, NaN counters) and, when fine-tuning (finetune.py), the frozen base parameters beside
the trained ones. Checkpoints hold `SavedState` (all but the frozen base). A step whose loss or gradient norm is not
finite leaves params/optimizer/EMA untouched, bumps `nan_in_row` and `nan_total`, and still advances `step` (so the
data and the RNG move on): `guarded_update`. The flow trainer's sharded creation and jitted step are flow_step.py's;
the codec's are codec_trainer.py's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


class OptimizedRun(Protocol):
    """What the optimizer reads of a run config (flow: core/config.Config; codec: training/codec_config.py)."""

    optim: Any  # core.config.OptimConfig
    train: Any  # has .steps


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 (); number of steps taken (including skipped ones)
    params: Any  # nnx.State of nnx.Param, fp32 master weights (cfg.model.param_dtype)
    rest: Any  # nnx.State of the model's other variables (e.g. RNG counters); not optimised
    opt_state: Any
    ema: Any  # exponential moving average of params; used for sampling and export
    nan_in_row: jax.Array  # int32 (); consecutive skipped (non-finite) steps
    nan_total: jax.Array  # int32 (); all skipped steps
    frozen: Any = None  # fine-tuning: nnx.State of the frozen base parameters (not checkpointed); else None

    def checkpointed(self) -> SavedState:
        """What checkpoint.save writes (and restore reads) for this state: everything but the frozen base."""
        return saved(self)

    def from_checkpoint(self, saved_state: SavedState) -> TrainState:
        """The restored state; its frozen base is None (a fine-tune sets it from train.init_from)."""
        return restored(saved_state, None)


@struct.dataclass
class SavedState:
    """What a checkpoint holds: the TrainState without the frozen base (train.init_from's weights)."""

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any
    ema: Any
    nan_in_row: jax.Array
    nan_total: jax.Array


def saved(state: TrainState) -> SavedState:
    return SavedState(**{f.name: getattr(state, f.name) for f in dataclasses.fields(SavedState)})


def restored(saved_state: SavedState, frozen: Any) -> TrainState:
    return TrainState(**{f.name: getattr(saved_state, f.name) for f in dataclasses.fields(SavedState)},
                      frozen=frozen)


def merge_model(graphdef: Any, params: Any, frozen: Any, rest: Any) -> nnx.Module:
    """The model from trained params (or their EMA), the frozen base (None when everything trains) and the rest."""
    return nnx.merge(graphdef, params, *(() if frozen is None else (frozen,)), rest)


def make_schedule(cfg: OptimizedRun) -> optax.Schedule:
    """Linear warmup from 0 to optim.lr, then cosine / linear decay to 0 at train.steps, or constant."""
    o, total = cfg.optim, cfg.train.steps
    warmup = min(o.warmup_steps, max(total - 1, 0))
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(total, warmup + 1), end_value=0.0)
    if o.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, warmup), optax.linear_schedule(o.lr, 0.0, max(total - warmup, 1))],
            [warmup])
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)], [warmup])


def make_optimizer(cfg: OptimizedRun) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; no weight decay on vectors (biases, norm scales)."""
    o = cfg.optim
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
        optax.adamw(make_schedule(cfg), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask),
    )


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


def guarded_update(state: TrainState, grads: Any, loss: jax.Array, rest: Any, tx: optax.GradientTransformation,
                   ema_decay: float) -> tuple[TrainState, jax.Array, jax.Array]:
    """One optimizer + EMA update that is skipped (state kept, NaN counters advanced) when the loss or the gradient
    norm is not finite. Returns (new state, gradient norm, finite)."""
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=keep(new_params, state.params),
        rest=keep(rest, state.rest),
        opt_state=keep(new_opt, state.opt_state),
        ema=keep(ema_update(state.ema, new_params, ema_decay), state.ema),
        nan_in_row=jnp.where(finite, 0, state.nan_in_row + 1),
        nan_total=state.nan_total + (~finite).astype(jnp.int32),
        frozen=state.frozen,
    )
    return new_state, grad_norm, finite


def adam_count(opt_state: Any) -> jax.Array:
    """The optimizer's step count (advances only on applied updates), for the logged learning rate."""
    counts = [x for x in jax.tree.leaves(opt_state) if x.ndim == 0 and jnp.issubdtype(x.dtype, jnp.integer)]
    return counts[0] if counts else jnp.zeros((), jnp.int32)


