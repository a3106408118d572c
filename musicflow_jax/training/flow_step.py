"""The flow stage's train step: the sharded state created from the config and the mesh (`make_setup`,
`create_state`: parameters born sharded inside jit, no full copy on one device), the jitted step with explicit
in/out shardings and a donated state (`make_train_step`: frozen text encoder inside, gradient accumulation, the
guarded update of state.py), and the FLOPs of one step (`step_flops`). The step's objective is the stage's flow loss,
or with distill.teacher a few-step student's (flow.distill_loss) against a frozen teacher passed in as an argument
(`TeacherSpec`: its graph and shardings; training/distill.py loads its weights).

The step's randomness is `fold_in(key(seed), step)`: resuming at step k replays exactly what an uninterrupted run
would have done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from musicflow_jax.core import flow, sharding
from musicflow_jax.core.config import Config
from musicflow_jax.encoders import meta
from musicflow_jax.models import lora
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.training import finetune, logger
from musicflow_jax.training.state import (
    TrainState,
    adam_count,
    guarded_update,
    make_optimizer,
    make_schedule,
    merge_model,
)

TextEncodeFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (text_params, ids_bl, mask_bl) -> emb_bld


@dataclasses.dataclass
class Setup:
    """Static pieces around the state: graph definition, shardings and the optimizer."""

    graphdef: Any
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: dict[str, str | None]
    state_shardings: TrainState
    abstract_state: TrainState  # ShapeDtypeStructs carrying the shardings (restore target)


@dataclasses.dataclass
class TeacherSpec:
    """A distillation teacher's static side: its model's graph definition and its weights' shardings on the mesh
    (those of the student's parameters: same logical axes)."""

    cfg: Config
    graphdef: Any
    shardings: Any  # (params, rest) NamedSharding trees
    abstract: Any  # (params, rest) ShapeDtypeStructs


def teacher_config(cfg: Config) -> Config:
    """The flow stage a student (distill.teacher) learns from: the student's model without the interval input."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, interval=False),
                               sample=dataclasses.replace(cfg.sample, solver="midpoint"),
                               distill=dataclasses.replace(cfg.distill, teacher=""))


def teacher_spec(cfg: Config, mesh: Mesh) -> TeacherSpec | None:
    """The teacher's graph and shardings for a distillation config, None for plain flow matching."""
    if not cfg.distill.teacher:
        return None
    tcfg = teacher_config(cfg)
    graphdef, params, rest = abstract_model(tcfg, nnx.Param, ...)
    abstract = (params, rest)
    rules = dict(cfg.mesh.rules)
    shardings = (sharding.state_shardings(abstract[0], mesh, rules), sharding.state_shardings(abstract[1], mesh, rules))
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return TeacherSpec(cfg=tcfg, graphdef=graphdef, shardings=shardings, abstract=abstract)


def abstract_model(cfg: Config, *filters: Any) -> tuple[Any, ...]:
    """(graphdef, *states) of the stage's model split by `filters` (none: one state), as ShapeDtypeStructs: nothing is
    allocated."""
    out: dict[str, Any] = {}

    def f() -> Any:
        with nnx.use_eager_sharding(False):
            out["graphdef"], *states = nnx.split(build_model(cfg, 0), *filters)
        return tuple(states)

    states = jax.eval_shape(f)  # fills out["graphdef"]
    return (out["graphdef"], *states)


def objective(cfg: Config, graphdef: Any, teacher: TeacherSpec | None
              ) -> Callable[[Any, Any, Any, jax.Array, dict[str, jax.Array], Any], tuple[jax.Array, Any]]:
    """`loss(params, frozen, rest, key, batch, teacher_weights) -> (loss, (aux, new_rest))`: the flow loss, or the
    student's distillation loss against the teacher (weights (params, rest), under stop_gradient)."""
    deterministic, flow_cfg, dc = cfg.model.dropout == 0.0, cfg.flow, cfg.distill

    def loss(params: Any, frozen: Any, rest: Any, key: jax.Array, mb: dict[str, jax.Array], teacher_weights: Any
             ) -> tuple[jax.Array, Any]:
        model = merge_model(graphdef, params, frozen, rest)
        apply = lambda inp: model(inp, deterministic=deterministic)  # noqa: E731
        if teacher is None:
            value, aux = flow.flow_loss(apply, key, mb, flow_cfg)
        else:
            t_model = nnx.merge(teacher.graphdef, *jax.lax.stop_gradient(teacher_weights))
            value, aux = flow.distill_loss(apply, lambda inp: t_model(inp, deterministic=True), key, mb, flow_cfg,
                                           method=dc.method, cfg_scale=dc.cfg_scale, p_instant=dc.p_instant,
                                           teacher_steps=dc.teacher_steps, adaptive_p=dc.adaptive_p,
                                           jumps=cfg.sample.steps, p_grid=dc.p_grid)
        return value, (aux, nnx.state(model, nnx.Not(nnx.Param)))

    return loss


def build_model(cfg: Config, seed: int) -> nnx.Module:
    """The flow transformer, with LoRA adapters on model.lora_targets when model.lora_rank > 0."""
    model = FlowTransformer(cfg, rngs=nnx.Rngs(seed))
    if cfg.model.lora_rank > 0:
        lora.add_adapters(model, cfg, jax.random.fold_in(jax.random.key(seed), 0x10A))
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


def make_setup(cfg: Config, mesh: Mesh, build: Callable[[Config, int], nnx.Module] = build_model) -> Setup:
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
                 build: Callable[[Config, int], nnx.Module] = build_model,
                 base: dict[str, Any] | None = None) -> TrainState:
    """Initialise the state inside jit with the target out_shardings: no full copy on one device. `base`: flat
    weights to start from (train.init_from, see `init_weights`)."""
    seed = cfg.train.seed if seed is None else seed
    init = jax.jit(lambda b: _init_state(cfg, seed, setup.tx, build, b)[1], out_shardings=setup.state_shardings)
    return init(base)


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
    if "text_bpm" in batch:  # text.meta: the tempo and key tokens after the caption's (encoders/meta.py)
        n_caption = batch["text_emb"].shape[1]
        batch["text_emb"], batch["text_mask"] = meta.append(batch["text_emb"], batch["text_mask"],
                                                            batch.pop("text_bpm"), batch.pop("text_key"))
        # which tokens are the tempo / key ones (flow.p_drop_caption drops the others alone)
        batch["text_is_meta"] = jnp.broadcast_to(jnp.arange(batch["text_mask"].shape[1]) >= n_caption,
                                                 batch["text_mask"].shape)
    return batch


def make_train_step(cfg: Config, setup: Setup, text_encode: TextEncodeFn | None,
                    teacher: TeacherSpec | None = None) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Jitted `step(state, batch, text_params[, teacher_weights]) -> (state, metrics)`; the state is donated.

    text_encode(text_params, ids_bl, mask_bl) -> emb_bld runs the frozen text encoder under stop_gradient
    (None when cfg.text.precomputed: the batch carries "text_emb"); text_params are replicated. With `teacher`
    (distill.teacher) the step takes the teacher's weights (params, rest), sharded as teacher.shardings, and trains
    the student on flow.distill_loss. metrics are replicated scalars ("lr" is the rate this step applied) plus the
    per-example "loss_per_example" and "t" (for loss-by-t-bin).
    """
    graphdef, tx = setup.graphdef, setup.tx
    accum, decay = cfg.optim.grad_accum, cfg.optim.ema_decay
    base_key = jax.random.key(cfg.train.seed)
    schedule = make_schedule(cfg)
    loss_of = objective(cfg, graphdef, teacher)

    def loss_fn(params: Any, rest: Any, key: jax.Array, mb: dict[str, jax.Array], frozen: Any, tw: Any
                ) -> tuple[jax.Array, Any]:
        return loss_of(params, frozen, rest, key, mb, tw)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(state: TrainState, batch: dict[str, jax.Array], text_params: Any, *teacher_weights: Any
                ) -> tuple[TrainState, dict]:
        with sharding.activation_mesh(setup.mesh):  # the model's activation constraints apply while tracing
            return _step(state, batch, text_params, teacher_weights[0] if teacher_weights else None)

    def _step(state: TrainState, batch: dict[str, jax.Array], text_params: Any, tw: Any) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        batch = with_text_emb(batch, text_encode, text_params)
        if accum == 1:
            (loss, (aux, rest)), grads = grad_fn(state.params, state.rest, key, batch, state.frozen, tw)
        else:
            micro = _split_micro(batch, accum)

            def body(carry, xs):  # noqa: ANN001, ANN202
                g_acc, rest_c = carry
                i, mb = xs
                (l_i, (aux_i, rest_i)), g_i = grad_fn(state.params, rest_c, jax.random.fold_in(key, i), mb,
                                                         state.frozen, tw)
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
    in_sh = (setup.state_shardings, batch_sh, rep) + (() if teacher is None else (teacher.shardings,))
    return jax.jit(step_fn, donate_argnums=(0,), in_shardings=in_sh, out_shardings=(setup.state_shardings, rep))


def step_flops(cfg: Config, mesh: Mesh, text_encode: TextEncodeFn | None, state: Any, batch: Any,
               text_params: Any, *teacher_weights: Any) -> tuple[float, str]:
    """(FLOPs of one global train step, source) from XLA's cost analysis of the *unrolled* step: the cost analysis
    counts a scan's body once, so a scanned model is lowered (traced only, never compiled) with scan_layers=false,
    which runs the same stacked parameters in a Python loop. `state` / `batch` may be abstract."""
    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
    setup = make_setup(unrolled, mesh)
    teacher = teacher_spec(unrolled, mesh)
    weights = teacher_weights if teacher is None else (teacher.abstract,)  # the unrolled teacher's stacked weights
    lowered = make_train_step(unrolled, setup, text_encode, teacher).lower(state, batch, text_params, *weights)
    return logger.step_flops(lowered, cfg, logger.count_params(state.params), logger.count_params(text_params))
