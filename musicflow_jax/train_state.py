"""The train state pytree, the optimizer (AdamW + schedule + clipping), EMA and the jitted train step.

`TrainState` holds everything that changes during training (step, params, optimizer state, EMA of the
params, non-trainable model state, NaN counters) and, when fine-tuning (finetune.py), the frozen base parameters
beside the trained ones; it is created already sharded by `create_state` and updated by the step that
`make_train_step` jits with explicit in/out shardings and a donated state. Checkpoints hold `SavedState` (all but
the frozen base).
A step whose loss or gradient norm is not finite leaves params/optimizer/EMA untouched, bumps
`nan_in_row` and `nan_total`, and still advances `step` (so the data and the RNG move on).
The step's randomness is `fold_in(key(seed), step)`: resuming at step k replays exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from musicflow_jax import finetune, flow, sharding
from musicflow_jax.config import Config

TextEncodeFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (text_params, ids_bl, mask_bl) -> emb_bld


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


# --------------------------------------------------------------------------- optimizer


def make_schedule(cfg: Config) -> optax.Schedule:
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


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW; no weight decay on vectors (biases, norm scales)."""
    o = cfg.optim
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
        optax.adamw(make_schedule(cfg), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask),
    )


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


# --------------------------------------------------------------------------- creation (already sharded)


@dataclasses.dataclass
class Setup:
    """Static pieces around the state: graph definition, shardings and the optimizer."""

    graphdef: Any
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: dict[str, str | None]
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings (restore target)


def _build_model(cfg: Config, seed: int) -> nnx.Module:
    """The flow transformer, with LoRA adapters on model.lora_targets when model.lora_rank > 0."""
    from musicflow_jax.models.transformer import FlowTransformer

    model = FlowTransformer(cfg, rngs=nnx.Rngs(seed))
    if cfg.model.lora_rank > 0:
        finetune.add_adapters(model, cfg, jax.random.fold_in(jax.random.key(seed), 0x10A))
    return model


def _init_state(cfg: Config, seed: int, tx: optax.GradientTransformation,
                build: Callable[[Config, int], nnx.Module], base: dict[str, Any] | None = None
                ) -> tuple[Any, TrainState]:
    """Fresh state; `base` (flat weights, train.init_from) replaces the initial values it has. Fine-tuning options
    split the parameters into trained (+ adapters) and frozen; the EMA starts at the trained values."""
    with nnx.use_eager_sharding(False):
        model = build(cfg, seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if base is not None:
        params = finetune.load_values(params, base)
    params, frozen = finetune.split(params, cfg)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                       ema=jax.tree.map(jnp.copy, params), nan_in_row=jnp.zeros((), jnp.int32),
                       nan_total=jnp.zeros((), jnp.int32), frozen=frozen)
    return graphdef, state


def _opt_shardings(tx: optax.GradientTransformation, abstract_opt: Any, param_shardings: Any,
                   mesh: Mesh) -> Any:
    """Optimizer-state leaves that mirror a param take that param's sharding; the rest are replicated."""
    return optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                 transform_non_params=lambda _: sharding.replicated(mesh))


def make_setup(cfg: Config, mesh: Mesh, build: Callable[[Config, int], nnx.Module] = _build_model) -> Setup:
    """Abstract state + shardings from the config and mesh, without allocating any parameter."""
    tx = make_optimizer(cfg)
    rules = dict(cfg.mesh.rules)
    graphdef, abstract = _abstract_init(cfg, tx, build)
    param_sh = sharding.state_shardings(abstract.params, mesh, rules)
    rest_sh = sharding.state_shardings(abstract.rest, mesh, rules)
    rep = sharding.replicated(mesh)
    shardings = TrainState(step=rep, params=param_sh, rest=rest_sh,
                           opt_state=_opt_shardings(tx, abstract.opt_state, param_sh, mesh),
                           ema=param_sh, nan_in_row=rep, nan_total=rep,
                           frozen=sharding.state_shardings(abstract.frozen, mesh, rules))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return Setup(graphdef=graphdef, tx=tx, mesh=mesh, rules=rules, state_shardings=shardings,
                 abstract_state=abstract)


def _abstract_init(cfg: Config, tx: optax.GradientTransformation,
                   build: Callable[[Config, int], nnx.Module]) -> tuple[Any, TrainState]:
    out: dict[str, Any] = {}

    def f() -> TrainState:
        graphdef, state = _init_state(cfg, 0, tx, build)
        out["graphdef"] = graphdef
        return state

    abstract = jax.eval_shape(f)
    return out["graphdef"], abstract


def create_state(cfg: Config, setup: Setup, seed: int | None = None,
                 build: Callable[[Config, int], nnx.Module] = _build_model,
                 base: dict[str, Any] | None = None) -> TrainState:
    """Initialise the state inside jit with the target out_shardings: no full copy on one device. `base`: flat
    weights to start from (train.init_from, see `init_weights`)."""
    seed = cfg.train.seed if seed is None else seed
    init = jax.jit(lambda b: _init_state(cfg, seed, setup.tx, build, b)[1], out_shardings=setup.state_shardings)
    return init(base)


def param_shapes(cfg: Config, build: Callable[[Config, int], nnx.Module] = _build_model) -> dict[str, tuple]:
    """Flat parameter path -> shape of the base model `cfg` builds, adapters left out (no allocation)."""
    from musicflow_jax.weights import param_shapes as shapes

    with nnx.use_eager_sharding(False):
        return {k: v for k, v in shapes(nnx.eval_shape(lambda: build(cfg, 0))).items() if not finetune.is_adapter(k)}


def init_weights(cfg: Config, verbose: bool = True) -> dict[str, Any] | None:
    """train.init_from's weights checked against this config's model (see finetune.check_init), or None."""
    if not cfg.train.init_from:
        return None
    flat, source = finetune.load_init(cfg.train.init_from)
    report = finetune.check_init(param_shapes(cfg), flat, source, cfg.train.init_partial)
    if verbose and jax.process_index() == 0:
        n = sum(int(np.prod(flat[k].shape)) for k in report["loaded"])
        print(f"init_from {source}: loaded {len(report['loaded'])} parameters ({n:,} values), missing "
              f"{len(report['missing'])}{' ' + str(report['missing'][:3]) if report['missing'] else ''}, unexpected "
              f"{len(report['unexpected'])}{' ' + str(report['unexpected'][:3]) if report['unexpected'] else ''}",
              file=sys.stderr)
    return {k: flat[k] for k in report["loaded"]}


# --------------------------------------------------------------------------- the step


def _split_micro(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}


def with_text_emb(batch: dict[str, jax.Array], text_encode: TextEncodeFn | None, text_params: Any
                  ) -> dict[str, jax.Array]:
    """The batch with "text_emb" (B, L, E): the frozen encoder's output (under stop_gradient) for "text_ids",
    unless the batch already carries precomputed embeddings; "text_ids" is dropped. Used inside jitted steps."""
    batch = dict(batch)
    ids = batch.pop("text_ids", None)
    if "text_emb" not in batch:
        if text_encode is None or ids is None:
            raise ValueError("batch has neither text_emb nor text_ids + a text encoder (check text.precomputed)")
        batch["text_emb"] = jax.lax.stop_gradient(text_encode(text_params, ids, batch["text_mask"]))
    return batch


def make_train_step(cfg: Config, setup: Setup, text_encode: TextEncodeFn | None
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Jitted `step(state, batch, text_params) -> (state, metrics)`; the state is donated.

    text_encode(text_params, ids_bl, mask_bl) -> emb_bld runs the frozen text encoder under stop_gradient
    (None when cfg.text.precomputed: the batch carries "text_emb"); text_params are replicated. metrics are
    replicated scalars ("lr" is the rate this step applied) plus the per-example "loss_per_example" and "t"
    (for loss-by-t-bin).
    """
    graphdef, tx = setup.graphdef, setup.tx
    accum, decay, flow_cfg = cfg.optim.grad_accum, cfg.optim.ema_decay, cfg.flow
    base_key = jax.random.key(cfg.train.seed)
    schedule = make_schedule(cfg)
    deterministic = cfg.model.dropout == 0.0

    def loss_fn(params: Any, rest: Any, key: jax.Array, mb: dict[str, jax.Array], frozen: Any
                ) -> tuple[jax.Array, Any]:
        model = merge_model(graphdef, params, frozen, rest)

        loss, aux = flow.flow_loss(lambda inp: model(inp, deterministic=deterministic), key, mb, flow_cfg)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        return loss, (aux, new_rest)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: dict[str, jax.Array], text_params: Any) -> tuple[TrainState, dict]:
        with sharding.activation_mesh(setup.mesh):  # the model's activation constraints apply while tracing
            return _step(state, batch, text_params)

    def _step(state: TrainState, batch: dict[str, jax.Array], text_params: Any) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        batch = with_text_emb(batch, text_encode, text_params)
        if accum == 1:
            (loss, (aux, rest)), grads = grad_fn(state.params, state.rest, key, batch, state.frozen)
        else:
            micro = _split_micro(batch, accum)

            def body(carry, xs):  # noqa: ANN001, ANN202
                g_acc, rest_c = carry
                i, mb = xs
                (l_i, (aux_i, rest_i)), g_i = grad_fn(state.params, rest_c, jax.random.fold_in(key, i), mb,
                                                         state.frozen)
                return (jax.tree.map(jnp.add, g_acc, g_i), rest_i), (l_i, aux_i)

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads, rest), (losses, auxs) = jax.lax.scan(body, (zeros, state.rest), (jnp.arange(accum), micro))
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss = losses.mean()
            aux = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), auxs)
        new_state, grad_norm, finite = guarded_update(state, grads, loss, rest, tx, decay)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "param_norm": optax.global_norm(new_state.params),
            "lr": schedule(adam_count(state.opt_state)),  # optax reads the count before incrementing it
            "finite": finite,
            "nan_in_row": new_state.nan_in_row,
            "nan_total": new_state.nan_total,
            "loss_per_example": aux["loss_per_example"],
            "t": aux["t"],
        }
        return new_state, metrics

    rep = sharding.replicated(setup.mesh)
    batch_sh = sharding.batch_sharding(setup.mesh, setup.rules)  # prefix: leading dim split, rest replicated
    return jax.jit(step_fn, donate_argnums=(0,), in_shardings=(setup.state_shardings, batch_sh, rep),
                   out_shardings=(setup.state_shardings, rep))


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


def step_flops(cfg: Config, mesh: Mesh, text_encode: TextEncodeFn | None, state: Any, batch: Any,
               text_params: Any) -> tuple[float, str]:
    """(FLOPs of one global train step, source) from XLA's cost analysis of the *unrolled* step: the cost analysis
    counts a scan's body once, so a scanned model is lowered (traced only, never compiled) with scan_layers=false,
    which runs the same stacked parameters in a Python loop. `state` / `batch` may be abstract."""
    from musicflow_jax import metrics

    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
    setup = make_setup(unrolled, mesh)
    lowered = make_train_step(unrolled, setup, text_encode).lower(state, batch, text_params)
    return metrics.step_flops(lowered, cfg, metrics.count_params(state.params), metrics.count_params(text_params))
