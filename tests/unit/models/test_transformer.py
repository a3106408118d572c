"""Tests of the flow transformer (musicflow_jax/models): shapes/dtypes for both stages, text and frame
masking, U-Net skips, RoPE relativity, parity of attention/LayerNorm with PyTorch, logical sharding axes,
remat/dropout, and the parameter counts of the paper-scale configs.

PARAM_COUNTS (count_params, exact; paper: stage 1 8 layers / stage 2 24 layers, 12 heads, dim 768,
FFN 3072, MusicFlow reports ~330M parameters in total):

    config        layers  feature_dim  cond_dim   params
    stage1_base     8        768          0        83,451,648   (83.5M)
    stage2_base    24        128        768       243,164,288  (243.2M)
    total                                         326,615,936  (326.6M, ~1% below the paper's ~330M)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import spmd as core_spmd

from musicflow_jax.core import beat, config
from musicflow_jax.core.config import LOGICAL_AXES, Config
from musicflow_jax.core.flow import FlowInput
from musicflow_jax.models.layers import LayerNorm, apply_rope, attention, sinusoidal_embedding
from musicflow_jax.models.transformer import FlowTransformer, SkipMerge, count_params

PARAM_COUNTS = {"stage1_base": 83_451_648, "stage2_base": 243_164_288}
PAPER_TOTAL = 330e6


@nnx.jit(static_argnames="deterministic")
def fwd(model: FlowTransformer, inp: dict, deterministic: bool = True) -> jax.Array:
    """The model's velocity, jitted (one compilation per program: op-by-op eager dispatch compiles far more)."""
    return model(FlowInput(**inp), deterministic=deterministic)


def tiny_cfg(stage: int, **model_overrides) -> Config:
    cfg = config.load(f"stage{stage}_tiny")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_overrides))


def make_inputs(cfg: Config, seed: int = 0, b: int = 2, t: int = 20, n_text: tuple[int, ...] = (7, 12)) -> dict:
    """Random model inputs; text example i has n_text[i] valid tokens (the rest is padding)."""
    k = jax.random.split(jax.random.key(seed), 5)
    m, L = cfg.model, cfg.text.max_len
    return dict(
        x_t_btd=jax.random.normal(k[0], (b, t, m.feature_dim)),
        ctx_btd=jax.random.normal(k[1], (b, t, m.feature_dim)),
        t_b=jax.random.uniform(k[2], (b,)),
        text_bld=jax.random.normal(k[3], (b, L, cfg.text.dim)),
        text_mask_bl=jnp.arange(L)[None, :] < jnp.asarray(n_text)[:, None],
        cond_btc=jax.random.normal(k[4], (b, t, m.cond_dim)) if m.cond_dim else None,
    )


@pytest.fixture(scope="module", params=[1, 2], ids=["stage1", "stage2"])
def tiny(request):
    cfg = tiny_cfg(request.param)
    return cfg, FlowTransformer(cfg, rngs=nnx.Rngs(0)), make_inputs(cfg)


# --------------------------------------------------------------------------- shapes, dtypes, masking


@pytest.mark.parametrize("stage", [1, 2])
def test_output_shape_dtype_fp32_and_bf16(stage):
    cfg32, cfg16 = tiny_cfg(stage), tiny_cfg(stage, dtype="bfloat16")
    inp = make_inputs(cfg32)
    v32 = fwd(FlowTransformer(cfg32, rngs=nnx.Rngs(0)), inp)
    v16 = fwd(FlowTransformer(cfg16, rngs=nnx.Rngs(0)), inp)  # same fp32 master weights, bf16 compute
    for v in (v32, v16):
        assert v.shape == inp["x_t_btd"].shape and v.dtype == jnp.float32
        assert bool(jnp.isfinite(v).all())
    rel = float(jnp.linalg.norm(v16 - v32) / jnp.linalg.norm(v32))
    assert 0.0 < rel < 0.05, f"bf16 compute deviates {rel:.3g} (relative) from fp32"


def test_bf16_params():
    cfg = tiny_cfg(1, dtype="bfloat16", param_dtype="bfloat16")
    model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    v = fwd(model, make_inputs(cfg))
    assert v.dtype == jnp.float32 and bool(jnp.isfinite(v).all())


def test_padded_text_tokens_have_no_influence(tiny):
    cfg, model, inp = tiny
    v = fwd(model, inp)
    noise = 100.0 * jax.random.normal(jax.random.key(9), inp["text_bld"].shape)
    text_changed = jnp.where(inp["text_mask_bl"][..., None], inp["text_bld"], noise)
    v_pad = fwd(model, {**inp, "text_bld": text_changed})
    np.testing.assert_allclose(np.asarray(v_pad), np.asarray(v), atol=1e-6, rtol=0)
    # ...whereas changing a valid token does change the output of that example
    bump = jax.random.normal(jax.random.key(4), (cfg.text.dim,))  # not a constant shift: LayerNorm removes those
    v_valid = fwd(model, {**inp, "text_bld": inp["text_bld"].at[0, 0].add(bump)})
    assert float(jnp.abs(v_valid[0] - v[0]).max()) > 1e-4
    np.testing.assert_allclose(np.asarray(v_valid[1]), np.asarray(v[1]), atol=1e-6, rtol=0)


def test_all_false_text_mask_is_finite_and_ignores_text(tiny):
    cfg, model, inp = tiny
    off = jnp.zeros_like(inp["text_mask_bl"])
    v_a = fwd(model, {**inp, "text_mask_bl": off})
    v_b = fwd(model, {**inp, "text_mask_bl": off, "text_bld": jnp.zeros_like(inp["text_bld"])})
    assert bool(jnp.isfinite(v_a).all())
    np.testing.assert_allclose(np.asarray(v_a), np.asarray(v_b), atol=1e-6, rtol=0)
    v_cond = fwd(model, inp)
    assert float(jnp.abs(v_a - v_cond).max()) > 1e-4  # the null branch differs from the conditional one


def test_padded_frames_have_no_influence(tiny):
    cfg, model, inp = tiny
    b, t, _ = inp["x_t_btd"].shape
    frame_mask = jnp.arange(t)[None, :] < jnp.array([[t], [t - 6]])
    v = fwd(model, {**inp, "frame_mask_bt": frame_mask})
    key = jax.random.key(3)
    changed = {k: (jnp.where(frame_mask[..., None], inp[k], 50.0 * jax.random.normal(key, inp[k].shape))
                   if k in ("x_t_btd", "ctx_btd", "cond_btc") and inp[k] is not None else inp[k]) for k in inp}
    v_changed = fwd(model, {**changed, "frame_mask_bt": frame_mask})
    np.testing.assert_allclose(np.asarray(v_changed), np.asarray(v), atol=1e-6, rtol=0)
    assert float(jnp.abs(v[1, t - 6:]).max()) == 0.0  # padded frames output exactly zero
    # and a short clip gives the same valid-frame output as the clip cut to its length
    cut = {k: (x[1:, : t - 6] if k in ("x_t_btd", "ctx_btd", "cond_btc") else x[1:]) if x is not None else None
           for k, x in inp.items()}
    np.testing.assert_allclose(np.asarray(fwd(model, cut)[0]), np.asarray(v[1, : t - 6]), atol=1e-5, rtol=0)


def test_input_errors_name_the_problem():
    cfg2 = tiny_cfg(2)
    model = FlowTransformer(cfg2, rngs=nnx.Rngs(0))
    inp = make_inputs(cfg2)
    with pytest.raises(ValueError, match="cond_btc"):
        fwd(model, {**inp, "cond_btc": None})
    with pytest.raises(ValueError, match="feature_dim"):
        fwd(model, {**inp, "x_t_btd": inp["x_t_btd"][..., :3]})


def test_beat_grid_input():
    """model.beat: the stage reads a (B, T, 5) grid beside its stream; frame f's velocity depends on frame f's grid
    value (through attention, on the others'); the grid is refused where the stage has none, and required where it
    does."""
    cfg = tiny_cfg(1, beat=True)
    model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
    inp = make_inputs(cfg)
    grid = jnp.asarray(beat.features(np.array([90.0, 120.0]), np.array([0.0, 0.5]), 20, 50.0))
    v = fwd(model, {**inp, "beat_btc": grid})
    assert v.shape == inp["x_t_btd"].shape and np.isfinite(np.asarray(v)).all()
    # the in-projection sees [x_t, ctx, grid]: a grid shifted by half a beat changes every frame's velocity
    shifted = jnp.asarray(beat.features(np.array([90.0, 120.0]), np.array([0.5, 0.0]), 20, 50.0))
    assert np.abs(np.asarray(fwd(model, {**inp, "beat_btc": shifted}) - v)).min() > 0
    assert model.in_proj.kernel.shape[0] == 2 * cfg.model.feature_dim + beat.CHANNELS
    with pytest.raises(ValueError, match=r"model.beat and needs beat_btc of shape \(B=2, T=20, 5\)"):
        fwd(model, inp)
    plain = FlowTransformer(tiny_cfg(1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.beat=false and takes no beat_btc"):
        fwd(plain, {**inp, "beat_btc": grid})


# --------------------------------------------------------------------------- U-Net skips


def test_skip_connections_structure_and_effect(tiny):
    cfg, model, inp = tiny
    half = cfg.model.depth // 2
    for stack, with_skip in ((model.down, False), (model.up, True)):  # stacked layers: leading axis = layer
        kernel = stack.layers.block.mlp.fc_in.kernel[...]
        assert kernel.shape == (half, cfg.model.dim, cfg.model.mlp_dim)
        assert (stack.layers.skip is not None) == with_skip
    v = fwd(model, inp)
    # SkipMerge is exactly a Linear on concat(h, skip) (layer 0's slice of the stacked parameters)
    s = model.up.layers.skip
    kh, ks, bias = s.kernel_h[...][0], s.kernel_skip[...][0], s.bias[...][0]
    one = SkipMerge(cfg.model.dim, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    one.kernel_h[...], one.kernel_skip[...], one.bias[...] = kh, ks, bias
    h, sk = jax.random.normal(jax.random.key(1), (2, 2, 5, cfg.model.dim))
    w_cat = jnp.concatenate([kh, ks], axis=0)
    np.testing.assert_allclose(np.asarray(one(h, sk)), np.asarray(jnp.concatenate([h, sk], -1) @ w_cat + bias),
                               atol=1e-5, rtol=1e-5)
    graphdef, state = nnx.split(model)
    zeroed = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))
    zeroed.up.layers.skip.kernel_skip[...] = jnp.zeros_like(zeroed.up.layers.skip.kernel_skip[...])
    v0 = fwd(zeroed, inp)
    assert float(jnp.abs(v0 - v).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(fwd(model, inp)), np.asarray(v), atol=0, rtol=0)  # original untouched


def _unrolled_reference(model: FlowTransformer, inp: dict) -> jax.Array:
    """The U-Net as written before the layers were stacked: block i < depth/2 stores its output, block j >= depth/2
    first merges the output of block depth-1-j (here with the stacked parameters sliced per layer)."""
    from musicflow_jax.models.layers import sinusoidal_embedding as emb

    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    half = m.depth // 2
    x, ctx, t_b, text, tmask, cond = (inp[k] for k in ("x_t_btd", "ctx_btd", "t_b", "text_bld", "text_mask_bl",
                                                         "cond_btc"))
    b, t, _ = x.shape
    h = m.in_proj(jnp.concatenate([x, ctx] + ([cond] if cond is not None else []), -1))
    h = h + m.time_fc2(jax.nn.silu(m.time_fc1(emb(t_b, m.time_dim))))[:, None]
    text = m.text_proj(m.text_norm(text))
    pos, fmask = jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.ones((b, t), bool)

    def layer(stack, i):  # noqa: ANN001, ANN202
        gd, st = nnx.split(stack.layers)
        return nnx.merge(gd, jax.tree.map(lambda a: a[i], st))

    skips = []
    for i in range(2 * half):
        if i >= half:
            lay = layer(m.up, i - half)
            h = lay.skip(h, skips[2 * half - 1 - i])
        else:
            lay = layer(m.down, i)
        h = lay.block(h, text, tmask.astype(bool), fmask, pos)
        if i < half:
            skips.append(h)
    return m.out_proj(m.norm_out(h)).astype(jnp.float32)


@pytest.mark.parametrize("stage", [1, 2])
def test_scanned_layers_equal_the_unrolled_model(stage):
    """The scan over stacked layers == a Python loop over the same layers (model.scan_layers=false) == the U-Net
    written out block by block: outputs and gradients."""
    cfg = tiny_cfg(stage)
    inp = make_inputs(cfg, t=16)
    models = {scan: FlowTransformer(tiny_cfg(stage, scan_layers=scan), rngs=nnx.Rngs(0)) for scan in (True, False)}
    ref = nnx.jit(_unrolled_reference)(models[True], inp)
    for scan, model in models.items():
        np.testing.assert_allclose(np.asarray(fwd(model, inp)), np.asarray(ref), atol=2e-6, rtol=1e-5,
                                   err_msg=f"scan_layers={scan}")
    grads = {scan: nnx.jit(nnx.grad(lambda m: jnp.mean(m(FlowInput(**inp)) ** 2)))(model)
             for scan, model in models.items()}
    flat = {scan: dict(nnx.to_flat_state(g)) for scan, g in grads.items()}
    assert flat[True].keys() == flat[False].keys()
    for path in flat[True]:
        np.testing.assert_allclose(np.asarray(flat[True][path][...]), np.asarray(flat[False][path][...]),
                                   atol=1e-6, rtol=1e-4, err_msg=str(path))


def test_stage_files_written_before_stacking_load(tmp_path):
    """A stage file in the unrolled layout (`blocks.<i>.*`, `skips.<j>.*`, as the previous bundled model was
    exported) loads into the stacked model with every tensor in its place: same outputs."""
    from safetensors.numpy import save_file

    from musicflow_jax.core import config as config_lib
    from musicflow_jax.models.params import flat_params
    from musicflow_jax.models.stage_file import load_stage

    cfg = tiny_cfg(2)
    model = FlowTransformer(cfg, rngs=nnx.Rngs(3))
    flat, half = flat_params(model), cfg.model.depth // 2
    old = {}
    for k, v in flat.items():
        for prefix, base in (("down.layers.block.", 0), ("up.layers.block.", half), ("up.layers.skip.", None)):
            if k.startswith(prefix):
                rest = k[len(prefix):]
                for i in range(half):
                    old[f"blocks.{base + i}.{rest}" if base is not None else f"skips.{i}.{rest}"] = v[i]
                break
        else:
            old[k] = v
    assert not any(k.startswith(("down.", "up.")) for k in old) and f"blocks.{2 * half - 1}.mlp.fc_in.kernel" in old
    path = tmp_path / "old_stage2.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in old.items()}, str(path),
              metadata={"format": "musicflow_jax.flow/1", "config": config_lib.to_json(cfg), "stage": "acoustic"})
    _, loaded = load_stage(path, "acoustic")
    inp = make_inputs(cfg)
    np.testing.assert_array_equal(np.asarray(fwd(loaded, inp)), np.asarray(fwd(model, inp)))


# --------------------------------------------------------------------------- layers vs references


def test_rope_is_relative_and_a_rotation():
    q_bthk = jax.random.normal(jax.random.key(0), (1, 16, 2, 8))
    k_bthk = jax.random.normal(jax.random.key(1), (1, 16, 2, 8))
    pos = jnp.arange(16)[None, :]

    def scores(offset):
        q, k = apply_rope(q_bthk, pos + offset, 10_000.0), apply_rope(k_bthk, pos + offset, 10_000.0)
        return jnp.einsum("bthk,bshk->bhts", q, k)

    s0 = scores(0)
    for off in (1, 37, 1000):
        np.testing.assert_allclose(np.asarray(scores(off)), np.asarray(s0), atol=2e-4, rtol=1e-4)
    assert float(jnp.abs(s0 - jnp.einsum("bthk,bshk->bhts", q_bthk, k_bthk)).max()) > 1e-2  # positions matter
    # head_dim 2: a plain rotation of (x1, x2) by angle = position
    x = jnp.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    out = apply_rope(jnp.broadcast_to(x, (1, 3, 1, 2)), jnp.array([[0, 1, 2]]), 10_000.0)[0, :, 0]
    np.testing.assert_allclose(np.asarray(out), np.stack([np.cos([0, 1, 2]), np.sin([0, 1, 2])], -1), atol=1e-6)


def _einsum_attention(q, k, v, mask):  # noqa: ANN001, ANN202 - the implementation before jax.nn.dot_product_attention
    logits = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
    logits = jnp.where(mask[:, None, None, :], logits, -1e30)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)


def test_attention_matches_torch_sdpa_and_the_einsum_form():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, n, 3, 8)).astype(np.float32) for n in (5, 7, 7))
    mask = np.ones((2, 7), bool)
    mask[0, 4:] = False
    ours = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))
    tq, tk, tv = (torch.from_numpy(a).transpose(1, 2) for a in (q, k, v))  # (b, h, t, k)
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(mask)[:, None, None])
    np.testing.assert_allclose(np.asarray(ours), ref.transpose(1, 2).numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(_einsum_attention(q, k, v, mask)), atol=1e-5, rtol=1e-5)
    # bf16 inputs: within bf16 rounding of the fp32 result (fp32 logits and softmax inside)
    qb, kb, vb = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
    out16 = attention(qb, kb, vb, jnp.asarray(mask))
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(ours), atol=3e-2, rtol=3e-2)
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(_einsum_attention(qb, kb, vb, mask),
                                                                          np.float32), atol=1e-2, rtol=1e-2)
    # a query whose keys are all masked: a finite (uniform) average, as before
    none = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.zeros((2, 7), bool))
    np.testing.assert_allclose(np.asarray(none), np.broadcast_to(v.mean(1, keepdims=True), none.shape), atol=1e-5)


def test_layernorm_matches_torch():
    torch = pytest.importorskip("torch")
    ln = LayerNorm(6, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    ln.scale[...] = jnp.arange(1.0, 7.0)
    ln.bias[...] = jnp.arange(6.0) / 10
    x = np.random.default_rng(1).standard_normal((2, 3, 6)).astype(np.float32) * 5 + 2
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (6,), torch.arange(1.0, 7.0), torch.arange(6.0) / 10)
    np.testing.assert_allclose(np.asarray(ln(jnp.asarray(x))), ref.numpy(), atol=1e-5, rtol=1e-5)


def test_sinusoidal_time_embedding_values():
    emb = sinusoidal_embedding(jnp.array([0.0, 0.25]), 8)
    np.testing.assert_allclose(np.asarray(emb[0]), [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
    freqs = np.exp(-np.log(10_000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(np.asarray(emb[1]), np.concatenate([np.cos(250 * freqs), np.sin(250 * freqs)]),
                               atol=1e-5)


# --------------------------------------------------------------------------- sharding metadata


def test_every_param_has_logical_axis_names():
    for stage in (1, 2):
        model = nnx.eval_shape(lambda s=stage: FlowTransformer(tiny_cfg(s), rngs=nnx.Rngs(0)))
        params = nnx.state(model, nnx.Param)
        flat = list(nnx.to_flat_state(params))
        assert len(flat) > 20
        for path, var in flat:
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == var.shape.__len__(), f"{path}: {names} for {var.shape}"
            assert all(n in LOGICAL_AXES for n in names), f"{path}: {names} not in {LOGICAL_AXES}"
            assert len(set(names)) == len(names), f"{path}: repeated logical axis {names}"


def test_sharded_forward_matches_unsharded():
    """Params sharded by cfg.mesh.rules over a (data=2, fsdp=2, tensor=2) mesh give the same velocity."""
    cfg = tiny_cfg(2)
    model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
    inp = make_inputs(cfg)
    ref = fwd(model, inp)
    # Auto axis types: activations follow GSPMD propagation from inputs and params (no explicit sharding)
    mesh = jax.make_mesh((2, 2, 2), config.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    graphdef, state = nnx.split(model)
    with core_spmd.logical_axis_rules(cfg.mesh.rules), jax.set_mesh(mesh):
        specs = nnx.get_partition_spec(state)
        state = jax.tree.map(lambda x, s: jax.device_put(x, jax.NamedSharding(mesh, s)), state, specs)
        kernel = state["down"]["layers"]["block"]["mlp"]["fc_in"]["kernel"][...]
        assert kernel.sharding.spec == jax.P(None, "fsdp", "tensor")  # ("layers", "embed", "mlp")

        @jax.jit
        def fwd_sharded(state, inp):
            return nnx.merge(graphdef, state)(FlowInput(**inp))

        out = fwd_sharded(state, inp)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=2e-5)


# --------------------------------------------------------------------------- remat, dropout, gradients


def _remat_loss_and_grad(remat: str) -> tuple[jax.Array, nnx.State]:
    """Loss and gradients of the stage-2 tiny model (depth 2) under one remat policy; the "none" baseline is computed
    once for both policies."""
    if remat not in _REMAT_CACHE:
        cfg = tiny_cfg(2, depth=2, remat=remat)
        inp = make_inputs(cfg, t=12)
        model = FlowTransformer(cfg, rngs=nnx.Rngs(0))
        _REMAT_CACHE[remat] = nnx.jit(nnx.value_and_grad(lambda m: jnp.mean(m(FlowInput(**inp)) ** 2)))(model)
    return _REMAT_CACHE[remat]


_REMAT_CACHE: dict[str, tuple[jax.Array, nnx.State]] = {}


@pytest.mark.parametrize("policy", ["dots", "full"])
def test_remat_same_values_and_grads(policy):
    (l0, g0), (l1, g1) = _remat_loss_and_grad("none"), _remat_loss_and_grad(policy)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)
    norms = {jax.tree_util.keystr(p): float(jnp.linalg.norm(x)) for p, x in jax.tree_util.tree_leaves_with_path(g0)}
    assert all(np.isfinite(n) and n > 0 for n in norms.values()), f"unused/NaN params: {norms}"


def test_dropout_only_when_not_deterministic():
    cfg0, cfg1 = tiny_cfg(1, depth=2), tiny_cfg(1, depth=2, dropout=0.3)
    inp = make_inputs(cfg0, t=12)
    ref = fwd(FlowTransformer(cfg0, rngs=nnx.Rngs(params=0, dropout=1)), inp)
    model = FlowTransformer(cfg1, rngs=nnx.Rngs(params=0, dropout=1))
    # deterministic: the dropout-free model's output (two programs, so to float round-off)
    np.testing.assert_allclose(np.asarray(fwd(model, inp)), np.asarray(ref), atol=1e-6, rtol=1e-6)
    a, b = fwd(model, inp, deterministic=False), fwd(model, inp, deterministic=False)
    assert bool(jnp.isfinite(a).all()) and float(jnp.abs(a - ref).max()) > 1e-3 and float(jnp.abs(a - b).max()) > 1e-3


# --------------------------------------------------------------------------- parameter counts


def test_param_counts_of_base_configs():
    got = {name: count_params(config.load(name)) for name in PARAM_COUNTS}
    total = sum(got.values())
    print(f"\nparams: {got}, total {total:,} ({total / 1e6:.1f}M) vs paper ~{PAPER_TOTAL / 1e6:.0f}M")
    assert got == PARAM_COUNTS
    assert abs(total - PAPER_TOTAL) / PAPER_TOTAL < 0.05
    cfg = tiny_cfg(1)  # count_params agrees with the materialised model
    n = sum(x.size for x in jax.tree.leaves(nnx.state(FlowTransformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
    assert count_params(cfg) == n


def test_flash_attention_matches_xla_forward_and_backward():
    """model.attention=flash (Pallas' TPU flash kernel, run here in its interpret mode): the same outputs and
    gradients as "xla" for a self-attention-like (150 frames, padded to 256) and a text-like (33 keys, 13 masked)
    case, also split over a (data 2, tensor 2) mesh, where it runs per device block through sharding.per_shard."""
    from jax.experimental.pallas import tpu as pltpu

    from musicflow_jax.core import sharding
    from musicflow_jax.core.config import MeshConfig

    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 150, 2, 64)), jnp.float32)
    for s, valid in ((150, (150, 120)), (33, (20, 33))):
        k, v = (jnp.asarray(rng.standard_normal((2, s, 2, 64)), jnp.float32) for _ in range(2))
        mask = jnp.asarray(np.arange(s)[None] < np.array(valid)[:, None])

        def loss(q, k, v, impl, mask=mask, kv_axis="frames" if s == 150 else "text"):  # noqa: ANN001, ANN202
            return (attention(q, k, v, mask, impl, MeshConfig().rules, kv_axis) ** 2).sum()

        ref, ref_g = attention(q, k, v, mask), jax.grad(loss, (0, 1, 2))(q, k, v, "xla")
        mesh = sharding.make_mesh(MeshConfig(shape=(2, 1, 2)), jax.devices()[:4])
        with pltpu.force_tpu_interpret_mode():
            out, g = attention(q, k, v, mask, "flash"), jax.grad(loss, (0, 1, 2))(q, k, v, "flash")

            def split(q, k, v, mesh=mesh, loss=loss):  # noqa: ANN001, ANN202
                with sharding.activation_mesh(mesh):
                    return jax.value_and_grad(loss, (0, 1, 2))(q, k, v, "flash")

            val_split, g_split = jax.jit(split)(q, k, v)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
        np.testing.assert_allclose(float(val_split), float(loss(q, k, v, "xla")), rtol=1e-5)
        for a, b, c in zip(g, g_split, ref_g):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=5e-5)
            np.testing.assert_allclose(np.asarray(b), np.asarray(c), atol=5e-5)
