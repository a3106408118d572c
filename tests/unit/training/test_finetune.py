"""Fine-tuning (finetune.py): train.init_from, LoRA adapters, freezing by pattern, adapter export / merge / apply.

- the LoRA product: x (W + s A B) == x W + s (x A) B for every kind of targeted weight (closed form);
- init_from: the first step's loss equals the exported model's flow loss on the same batch and key; the EMA starts at
  the loaded weights, the optimizer fresh; a model of another size is a one-line error naming the parameter;
  with init_partial a new input (model.beat) grows the input projection with zero rows: the file's model exactly;
- after LoRA steps the frozen base is bit-identical to the file it came from, only adapters train and have optimizer
  state, checkpoints hold no base weight, and a resumed LoRA run equals an uninterrupted one;
- the merged export, the adapter file applied at generation and the training-time model give the same outputs
  (1e-5); lora_scale 0 is the base model exactly;
- train.trainable trains only what it matches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from musicflow_jax.cli import generate as generate_cli
from musicflow_jax.cli import train as train_cli
from musicflow_jax.core import beat, config, flow, sharding
from musicflow_jax.data import loader as data
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.models import lora as finetune
from musicflow_jax.models import stage_file as stage_io
from musicflow_jax.models.lora import FineTuneError
from musicflow_jax.models.params import flat_params
from musicflow_jax.models.transformer import FlowTransformer
from musicflow_jax.testing.cli import run_main
from musicflow_jax.training import checkpoint, export, flow_step, runs
from musicflow_jax.training import finetune as finetune_lib
from musicflow_jax.training import flow_trainer as train
from musicflow_jax.training import state as train_state
from musicflow_jax.training.flow_trainer import TrainInputError
from musicflow_jax.training.logger import count_params


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from musicflow_jax.testing.model_folders import make_model_folder

    return make_model_folder(tmp_path_factory.mktemp("ft_model"))


def _cfg(folder: Path, *overrides: str) -> config.Config:
    base, _ = stage_io.read_stage(folder / "stage1.safetensors")
    return config.apply_overrides(base, [
        f"train.init_from={folder / 'stage1.safetensors'}", "train.steps=6", "train.log_every=1", "train.eval_every=0",
        "train.ckpt_every=3", "train.sample_every=0", "train.keep=5", "optim.lr=1e-2", "optim.warmup_steps=0",
        "optim.schedule=constant", "optim.ema_decay=0.5", "data.batch_size=4", *overrides])


# --------------------------------------------------------------------------- the LoRA product


@pytest.mark.parametrize("w_shape,lead,n_in", [((6, 10), 0, 1), ((3, 6, 2, 5), 1, 1), ((3, 2, 5, 6), 1, 2)])
def test_lora_product_is_the_low_rank_update(w_shape, lead, n_in):
    """x (W + s A B) = x W + s (x A) B, contracting the kernel's input axes (attention's w_o has two)."""
    rng = np.random.default_rng(0)
    r, s = 3, 0.7
    lead_shape, in_shape, out_shape = w_shape[:lead], w_shape[lead:lead + n_in], w_shape[lead + n_in:]
    w = rng.normal(size=w_shape)
    a = rng.normal(size=(*lead_shape, *in_shape, r))
    b = rng.normal(size=(*lead_shape, r, *out_shape))
    x = rng.normal(size=(4, int(np.prod(in_shape))))
    merged = finetune.merge_flat({"k": w, "k_lora_a": a, "k_lora_b": b}, s)["k"]
    for li in np.ndindex(*lead_shape):
        w2, a2, b2 = (m[li].reshape(int(np.prod(in_shape)), -1) for m in (w, a, merged))
        b_l = b[li].reshape(r, -1)
        np.testing.assert_allclose(x @ b2, x @ w2 + s * (x @ a2) @ b_l, rtol=1e-12, atol=1e-12)


def test_bad_patterns_are_errors_naming_the_key(folder):
    with pytest.raises(config.ConfigError, match="model.lora_targets"):
        _cfg(folder, "model.lora_targets=([")
    cfg = _cfg(folder, "model.lora_rank=2", "model.lora_targets=norm_self")
    with pytest.raises(finetune.FineTuneError, match="not a weight matrix"):
        flow_step.make_setup(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
    cfg = _cfg(folder, "train.trainable=no_such_layer")
    with pytest.raises(finetune.FineTuneError, match="train.trainable"):
        flow_step.make_setup(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))


# --------------------------------------------------------------------------- init_from


def _one_device(cfg: config.Config):
    cfg = config.apply_overrides(cfg, ["mesh.shape=(1,1,1)"])
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    setup = flow_step.make_setup(cfg, mesh)
    encode, tp = train.load_text_encoder(cfg, mesh)
    local = next(iter(data.make_dataset(cfg, process_index=0, process_count=1)))
    return cfg, setup, encode, tp, sharding.global_batch(local, mesh, setup.rules, cfg.data.batch_size)


@pytest.mark.parametrize("extra", [(), ("model.lora_rank=4",)], ids=["full", "lora"])
def test_init_from_first_step_loss_is_the_exported_models_loss(folder, extra):
    cfg, setup, encode, tp, batch = _one_device(_cfg(folder, *extra))
    base = runs.init_weights(cfg)
    state = flow_step.create_state(cfg, setup, base=base)
    if not extra:  # full fine-tune: the EMA starts at the loaded weights, the optimizer is fresh
        for p, v in nnx.to_flat_state(state.ema):
            np.testing.assert_array_equal(np.asarray(v[...]), base[finetune.key_of(p)])
        assert int(train_state.adam_count(state.opt_state)) == 0
    _, m = flow_step.make_train_step(cfg, setup, encode)(state, batch, tp)

    _, model = stage_io.load_stage(folder / "stage1.safetensors")
    full = flow_step.with_text_emb(batch, encode, tp)
    key = jax.random.fold_in(jax.random.key(cfg.train.seed), 0)  # the step's key at step 0
    want, _ = flow.flow_loss(lambda inp: model(inp, deterministic=True), key, full, cfg.flow)
    np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-6)


def test_init_from_of_another_size_is_a_one_line_error(folder, tmp_path, capsys):
    proc = run_main(train_cli.main, ["--config", "stage1_tiny", "--workdir", str(tmp_path / "w"), "--set",
                                     f"train.init_from={folder / 'stage1.safetensors'}"], capsys)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "does not fit this model" in err[0] and "there but" in err[0] and "here" in err[0], err[0]


def test_init_partial_grows_a_new_input_with_zero_rows(folder):
    """A stage given the beat grid (model.beat appends 5 input features) starts from a file without it: the input
    projection's file rows load, the new rows are zero, so the grown model computes the file's velocity whatever
    grid it is given; without init_partial it stays a one-line shape error."""
    cfg = _cfg(folder, "model.beat=true", "train.init_partial=true")
    base = runs.init_weights(cfg, verbose=False)
    _, file_model = stage_io.load_stage(folder / "stage1.safetensors")
    want = flat_params(file_model)
    assert base.keys() == want.keys()
    k = "in_proj.kernel"
    assert base[k].shape == (want[k].shape[0] + beat.CHANNELS, want[k].shape[1])
    np.testing.assert_array_equal(base[k][:want[k].shape[0]], want[k])
    np.testing.assert_array_equal(base[k][want[k].shape[0]:], 0.0)

    grown = FlowTransformer(cfg, rngs=nnx.Rngs(1))
    nnx.update(grown, finetune_lib.load_values(nnx.state(grown, nnx.Param), base))
    rng = np.random.default_rng(0)
    b, t, f = 2, cfg.data.frames, cfg.model.feature_dim
    inp = flow.FlowInput(rng.normal(size=(b, t, f)).astype(np.float32), np.zeros((b, t, f), np.float32),
                         np.asarray([0.3, 0.8], np.float32), rng.normal(size=(b, 5, cfg.text.dim)).astype(np.float32),
                         np.ones((b, 5), bool), None, None)
    grid = beat.features(np.asarray([96.0, 120.0]), np.asarray([0.0, 0.5]), t, 50.0)
    np.testing.assert_allclose(np.asarray(grown(inp._replace(beat_btc=grid))), np.asarray(file_model(inp)),
                               rtol=1e-5, atol=1e-6)

    with pytest.raises(FineTuneError, match="'in_proj.kernel' is .* there but .* here.*set train.init_partial=true"):
        runs.init_weights(_cfg(folder, "model.beat=true"), verbose=False)


def _rewrite_safetensors(src: Path, dst: Path, *, reverse: bool = True, flip_byte: bool = False,
                         meta: dict[str, str] | None = None) -> None:
    """`src` written again as the safetensors writer may write it: its header keys (metadata and tensors) in
    another order; optionally one data byte flipped or metadata entries changed."""
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = {**header["__metadata__"], **(meta or {})}
    header["__metadata__"] = dict(sorted(header["__metadata__"].items(), reverse=reverse))
    header = dict(sorted(header.items(), reverse=reverse))
    head = json.dumps(header).encode()
    data = bytearray(raw[8 + n:])
    if flip_byte:
        data[-1] ^= 1
    dst.write_bytes(len(head).to_bytes(8, "little") + head + bytes(data))


def test_a_reexported_init_from_keeps_its_fingerprint_and_a_changed_one_is_refused(folder, tmp_path):
    """Two saves of the same weights differ in bytes (metadata key order): the fingerprint reads the content, so a
    resumed run accepts the re-export; a changed tensor or metadata value is refused with a one-line error naming
    train.init_from; a record written with the raw bytes' fingerprint (before 2026-12-05) still resumes and is
    rewritten by content."""
    src = folder / "stage1.safetensors"
    assert len(json.loads(src.read_bytes()[8:8 + int.from_bytes(src.read_bytes()[:8], "little")])["__metadata__"]) > 1
    path = tmp_path / "init.safetensors"
    _rewrite_safetensors(src, path, reverse=False)
    shutil.copy(path, tmp_path / "init.safetensors.orig")
    again, flipped, relabelled = (tmp_path / n / path.name for n in ("again", "flipped", "relabelled"))
    for f in (again, flipped, relabelled):
        f.parent.mkdir()
    _rewrite_safetensors(src, again)
    _rewrite_safetensors(src, flipped, reverse=False, flip_byte=True)
    _rewrite_safetensors(src, relabelled, reverse=False, meta={"format": "other"})
    assert path.read_bytes() != again.read_bytes() and path.stat().st_size == again.stat().st_size
    assert finetune_lib.fingerprint(path) == finetune_lib.fingerprint(again)
    assert finetune_lib.fingerprint(path, by_content=False) != finetune_lib.fingerprint(again, by_content=False)
    assert finetune_lib.fingerprint(flipped) != finetune_lib.fingerprint(path)
    assert finetune_lib.fingerprint(relabelled) != finetune_lib.fingerprint(path)

    cfg = _cfg(folder, f"train.init_from={path}")
    work = tmp_path / "run"
    train.check_init_source(cfg, work, resuming=False)
    record = json.loads((work / train.INIT_RECORD).read_text())
    assert record == {"fingerprints": "content", "init_from": str(path),
                      "fingerprint": finetune_lib.fingerprint(path)}
    shutil.copy(again, path)
    train.check_init_source(cfg, work, resuming=True)  # the re-export resumes
    for changed in (flipped, relabelled):
        shutil.copy(changed, path)
        with pytest.raises(TrainInputError, match=f"^train.init_from {path} differs from the weights this run "
                                                  "started from.*start a new --workdir$"):
            train.check_init_source(cfg, work, resuming=True)

    # an old record: the raw bytes' fingerprint of the file the run started from (`again`'s bytes)
    old = {"init_from": str(path), "fingerprint": finetune_lib.fingerprint(again, by_content=False)}
    (work / train.INIT_RECORD).write_text(json.dumps(old))
    for changed in (flipped, work.parent / "init.safetensors.orig"):  # other bytes: refused, saying what to do
        shutil.copy(changed, path)
        with pytest.raises(TrainInputError, match=r"--workdir \(the record predates content fingerprints: if the "
                                                  f"file is a re-export of the same weights, delete {work}"):
            train.check_init_source(cfg, work, resuming=True)
        assert json.loads((work / train.INIT_RECORD).read_text()) == old
    shutil.copy(again, path)
    train.check_init_source(cfg, work, resuming=True)  # the same bytes resume ...
    assert json.loads((work / train.INIT_RECORD).read_text()) == record  # ... and the record now reads by content,
    shutil.copy(work.parent / "init.safetensors.orig", path)
    train.check_init_source(cfg, work, resuming=True)  # so a later re-export resumes too
    shutil.copy(flipped, path)
    with pytest.raises(TrainInputError, match="started from.*start a new --workdir$"):
        train.check_init_source(cfg, work, resuming=True)


def test_a_reexported_teacher_or_folder_keeps_its_fingerprint(folder, tmp_path):
    """distill.teacher is recorded and checked as train.init_from is; a folder's fingerprint reads its .safetensors
    files by content too (a model folder with one stage re-exported) and its other files by bytes."""
    teacher = tmp_path / "teacher.safetensors"
    _rewrite_safetensors(folder / "stage1.safetensors", teacher, reverse=False)
    cfg = _cfg(folder, f"distill.teacher={teacher}", "model.interval=true", "sample.solver=average",
               "sample.steps=2", "sample.cfg_scale=1")
    work = tmp_path / "student"
    train.check_init_source(cfg, work, resuming=False)
    record = json.loads((work / train.INIT_RECORD).read_text())
    assert record["teacher"] == str(teacher) and record["teacher_fingerprint"] == finetune_lib.fingerprint(teacher)
    _rewrite_safetensors(folder / "stage1.safetensors", teacher)  # re-exported: accepted
    train.check_init_source(cfg, work, resuming=True)
    _rewrite_safetensors(folder / "stage1.safetensors", teacher, flip_byte=True)
    with pytest.raises(TrainInputError, match=f"^distill.teacher {teacher} differs from the weights"):
        train.check_init_source(cfg, work, resuming=True)

    copy = tmp_path / "folder"
    shutil.copytree(folder, copy)
    was = finetune_lib.fingerprint(copy)
    _rewrite_safetensors(folder / "stage2.safetensors", copy / "stage2.safetensors")
    assert (copy / "stage2.safetensors").read_bytes() != (folder / "stage2.safetensors").read_bytes()
    assert finetune_lib.fingerprint(copy) == was
    (copy / "features.json").write_text((copy / "features.json").read_text() + " ")
    assert finetune_lib.fingerprint(copy) != was


def test_a_file_named_safetensors_that_is_not_one_is_fingerprinted_by_its_bytes(tmp_path):
    """A Git LFS pointer or a truncated file: no header read (no huge allocation, no traceback), the raw bytes'
    fingerprint."""
    pointer = tmp_path / "a" / "model.safetensors"
    pointer.parent.mkdir()
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:53aa\nsize 90868376\n")
    truncated = tmp_path / "b" / "model.safetensors"
    truncated.parent.mkdir()
    head = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    truncated.write_bytes(len(head).to_bytes(8, "little") + head + bytes(8))  # 8 of its 16 data bytes
    for f in (pointer, truncated, pointer.parent):
        assert finetune_lib.fingerprint(f) == finetune_lib.fingerprint(f, by_content=False)
    whole = tmp_path / "c" / "model.safetensors"
    whole.parent.mkdir()
    whole.write_bytes(len(head).to_bytes(8, "little") + head + bytes(16))
    assert finetune_lib.fingerprint(whole) != finetune_lib.fingerprint(whole, by_content=False)


# --------------------------------------------------------------------------- a LoRA run


@pytest.fixture(scope="module")
def lora_run(folder, tmp_path_factory) -> dict:
    """6 LoRA steps (rank 4, on a 2 x 2 x 2 data x fsdp x tensor mesh) from the folder's stage 1, checkpoints at 3
    and 6; a second run stopped at 3 and resumed to 6."""
    root = tmp_path_factory.mktemp("lora_run")
    cfg = _cfg(folder, "model.lora_rank=4", "mesh.shape=(2,2,2)")
    state = train.train(cfg, root / "run", async_ckpt=False)
    train.train(config.apply_overrides(cfg, ["train.steps=3"]), root / "resumed", async_ckpt=False)
    resumed = train.train(cfg, root / "resumed", async_ckpt=False)
    return {"cfg": cfg, "state": state, "resumed": resumed, "root": root}


def test_lora_steps_leave_the_base_bit_identical(folder, lora_run):
    state = lora_run["state"]
    base = flat_params(stage_io.load_stage(folder / "stage1.safetensors")[1])
    frozen = {finetune.key_of(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state.frozen)}
    assert set(frozen) == set(base)
    for k, v in frozen.items():
        np.testing.assert_array_equal(v, base[k], err_msg=k)  # bit-identical
    trained = {finetune.key_of(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state.params)}
    assert trained and all(finetune.is_adapter(k) for k in trained)
    assert all(np.abs(v).max() > 0 for k, v in trained.items() if k.endswith(finetune.LORA_B))  # B left zero
    # optimizer state mirrors the adapters only (Adam's two moments), and they are sharded by their logical axes
    n_adapter = count_params(state.params)
    float_leaves = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in float_leaves) == 2 * n_adapter
    a_q = next(v for p, v in nnx.to_flat_state(state.params) if finetune.key_of(p).endswith("self_attn.w_q_lora_a"))
    assert a_q[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)  # (layers, embed, r)
    assert n_adapter <= 0.2 * count_params(state.frozen)
    # the checkpoint holds the adapters, their EMA and optimizer moments: no base weight
    handler = ocp.StandardCheckpointHandler()
    tree = handler.metadata(epath.Path(lora_run["root"] / "run" / "checkpoints" / "6" / "state"))
    handler.close()
    saved = [checkpoint._dotted(p) for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
             if len(getattr(m, "shape", ()) or ()) > 0]
    assert saved and all("_lora_" in n for n in saved), [n for n in saved if "_lora_" not in n][:5]


def test_resumed_lora_run_equals_uninterrupted(lora_run):
    for a, b in zip(jax.tree.leaves(lora_run["state"].params), jax.tree.leaves(lora_run["resumed"].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_merged_and_applied_adapters_match_the_trained_model(folder, lora_run, tmp_path):
    cfg, state, run = lora_run["cfg"], lora_run["state"], lora_run["root"] / "run"
    adapters = export.export(run, tmp_path / "lora.safetensors")
    merged = export.export(run, tmp_path / "merged.safetensors", merge_lora=True)
    meta, tensors = finetune.read_adapters(adapters)
    assert all(finetune.is_adapter(k) for k in tensors) and meta["stage"] == "semantic"
    merged_cfg, merged_model = stage_io.load_stage(merged)
    assert merged_cfg.model.lora_rank == 0

    # the training-time model (EMA adapters applied unmerged) vs the merged stage file
    one = config.apply_overrides(cfg, ["mesh.shape=(1,1,1)"])
    setup = flow_step.make_setup(one, sharding.make_mesh(one.mesh, jax.devices()[:1]))
    host = jax.device_get((state.ema, state.frozen, state.rest))
    live = train_state.merge_model(setup.graphdef, *host)  # unmerged: x W + s (x A) B in every layer
    rng = np.random.default_rng(0)
    b, t, f = 2, 40, cfg.model.feature_dim
    inp = flow.FlowInput(x_t_btd=rng.normal(size=(b, t, f)).astype(np.float32), ctx_btd=np.zeros((b, t, f), np.float32),
                         t_b=np.array([0.3, 0.8], np.float32),
                         text_bld=rng.normal(size=(b, 7, cfg.text.dim)).astype(np.float32),
                         text_mask_bl=np.ones((b, 7), bool))
    v_live, v_merged = np.asarray(live(inp)), np.asarray(merged_model(inp))
    np.testing.assert_allclose(v_merged, v_live, rtol=1e-5, atol=1e-5)

    # generation: the adapter file applied (API) == the merged stage; scale 0 == the base model, exactly
    kw = dict(duration=1.5, seed=3, progress=False)
    texts = ["a calm piano piece"]
    applied = MusicFlow.load(folder, lora=[adapters]).generate(texts, **kw).audio
    with_merged = MusicFlow.load(folder, stage1=merged).generate(texts, **kw).audio
    np.testing.assert_allclose(applied, with_merged, rtol=1e-5, atol=1e-5)
    base_mf = MusicFlow.load(folder)
    np.testing.assert_array_equal(base_mf.with_lora(adapters, 0.0).generate(texts, **kw).audio,
                                  base_mf.generate(texts, **kw).audio)
    assert np.abs(applied - base_mf.generate(texts, **kw).audio).max() > 1e-4  # the adapters do change the output


def test_generate_cli_lora_errors_are_one_line(folder, tmp_path, capsys):
    bad = tmp_path / "not_adapters.safetensors"
    bad.write_bytes(b"nope")
    for args, needle in ((["--lora", str(bad)], "not a readable safetensors"),
                         (["--lora", str(folder / "stage1.safetensors")], "is not an adapter file"),
                         (["--lora-scale", "0.5"], "--lora-scale goes with --lora")):
        proc = run_main(generate_cli.main, ["--checkpoint", str(folder), "--text", "x", "--out",
                                            str(tmp_path / "o.wav"), "--quiet", *args], capsys)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr[-1500:]
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --------------------------------------------------------------------------- freezing by pattern


def test_trainable_pattern_trains_only_what_it_matches(folder):
    cfg, setup, encode, tp, batch = _one_device(_cfg(folder, "train.trainable=cross_attn"))
    state = flow_step.create_state(cfg, setup, base=runs.init_weights(cfg))
    before = {finetune.key_of(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state.frozen)}
    trained0 = {finetune.key_of(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state.params)}
    assert trained0 and all("cross_attn" in k for k in trained0) and not any("cross_attn" in k for k in before)
    step = flow_step.make_train_step(cfg, setup, encode)
    for _ in range(2):
        state, _ = step(state, batch, tp)
    after = {finetune.key_of(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state.frozen)}
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    trained = {finetune.key_of(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(state.params)}
    assert any(np.abs(trained[k] - trained0[k]).max() > 0 for k in trained)
