"""A tiny flow transformer memorises one batch through the real loss and the real optimizer."""

import functools

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from musicflow_jax.core import config as C
from musicflow_jax.core import flow
from musicflow_jax.data import loader as data
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.training.state import make_optimizer

STEPS = 600


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    # No CFG dropout: every example keeps its text, so the target is a function of the inputs and the
    # loss can go to ~0 (with dropout the unconditional part has irreducible variance).
    cfg = C.load("stage1_tiny", [
        "flow.p_drop_text=0", "flow.p_drop_context=0", "optim.warmup_steps=10", "optim.schedule=cosine",
        "optim.lr=3e-3", f"train.steps={STEPS}", "optim.weight_decay=0", "data.batch_size=4"])
    batch = {k: jnp.asarray(v) for k, v in next(iter(data.make_dataset(cfg, "train", process_index=0,
                                                                        process_count=1))).items()}
    batch["text_emb"] = jax.random.normal(jax.random.key(9), (cfg.data.batch_size, 4, cfg.text.dim))
    batch["text_mask"] = jnp.ones(batch["text_emb"].shape[:2], bool)
    model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, make_optimizer(cfg), wrt=nnx.Param)

    graphdef, state = nnx.split((model, opt))

    # the STEPS steps in one program, runtime-bound: compiled at XLA's default optimisation level, not the suite's -O0
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
    def train(state):
        model, opt = nnx.merge(graphdef, state)

        def step(i, model_opt):
            model, opt = model_opt
            grads = nnx.grad(lambda m: flow.flow_loss(m, jax.random.key(i), batch, cfg.flow)[0])(model)
            opt.update(model, grads)
            return model, opt

        nnx.fori_loop(0, STEPS, step, (model, opt))
        return nnx.state((model, opt))

    @nnx.jit
    def eval_loss(model):  # fixed noise/time/mask draws: the same 16 keys before and after
        keys = jax.random.split(jax.random.key(123), 16)
        return jnp.mean(jax.vmap(lambda k: flow.flow_loss(model, k, batch, cfg.flow)[0])(keys))

    before = float(eval_loss(model))
    nnx.update((model, opt), train(state))
    after = float(eval_loss(model))
    print(f"overfit: eval loss {before:.4f} -> {after:.4f} ({after / before:.1%})")
    assert after < 0.1 * before
