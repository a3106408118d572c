"""Configs: every shipped config loads and validates; overrides apply; bad overrides name the key."""

import dataclasses
from pathlib import Path

import pytest

from musicflow_jax.core import config as C

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.py"))
CODEC_CONFIGS = [p for p in CONFIGS if p.name.startswith("codec_")]  # musicflow_jax.train_codec's
CONFIGS = [p for p in CONFIGS if p.name != "__init__.py" and p not in CODEC_CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_roundtrip(path):
    cfg = C.load(path)
    assert cfg.name == path.stem
    assert C.from_json(C.to_json(cfg)) == cfg
    assert C.config_hash(cfg) == C.config_hash(C.from_json(C.to_json(cfg)))


@pytest.mark.parametrize("path", CODEC_CONFIGS, ids=lambda p: p.stem)
def test_shipped_codec_configs_load_and_roundtrip(path):
    import json

    from musicflow_jax.core import config_io
    from musicflow_jax.training import codec_config

    cfg = codec_config.load_config(path)
    assert cfg.name == path.stem and codec_config.load_config(path.stem) == cfg  # by file and by name
    assert codec_config.from_dict(json.loads(config_io.to_json(cfg))) == cfg
    with pytest.raises(C.ConfigError, match="python -m musicflow_jax.train_codec"):
        C.load(path)  # the flow trainer names the right entry point


def test_paper_sizes_and_tiny_derivation():
    s1, s2 = C.load("stage1_base"), C.load("stage2_base")
    assert (s1.model.depth, s2.model.depth) == (8, 24)
    for m in (s1.model, s2.model):
        assert (m.heads, m.dim, m.mlp_dim) == (12, 768, 3072)
    assert (s1.model.stage, s2.model.stage) == ("semantic", "acoustic")
    t1, t2 = C.load("stage1_tiny"), C.load("stage2_tiny")
    assert t2.model.cond_dim == t1.model.feature_dim  # stage 2 is conditioned on stage 1's output
    assert t1.flow == s1.flow  # derived, not copied: untouched sections are the base's


def test_overrides_apply_with_types():
    cfg = C.load("stage1_tiny", ["optim.lr=3e-4", "mesh.shape=(2,2,2)", "model.remat=dots",
                                            "data.source=synthetic", "sample.solver=dopri5", "train.steps=7"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.mesh.shape == (2, 2, 2)
    assert cfg.model.remat == "dots"
    # configs stored when remat was a bool (exported stages, checkpoints) still load: false = none, true = full
    for old, new in ((False, "none"), (True, "full")):
        data = C.to_dict(cfg)
        data["model"]["remat"] = old
        assert C.from_dict(data).model.remat == new
    assert cfg.sample.solver == "dopri5" and cfg.train.steps == 7
    # overrides are applied together, then validated: switching stage needs cond_dim in the same call
    cfg2 = C.apply_overrides(cfg, ["model.stage=acoustic", "model.cond_dim=32"])
    assert cfg2.model.stage == "acoustic"
    rules = C.apply_overrides(cfg, ["mesh.rules=(('batch','data'),('embed',None))"]).mesh.rules
    assert rules == (("batch", "data"), ("embed", None))


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("optim.lrr=1", "valid keys: lr, b1"),
        ("nosuch.x=1", "unknown config key 'nosuch.x'"),
        ("model.heads=5", "config key 'model.heads': must divide model.dim=64"),
        ("model.depth=3", "model.depth"),
        ("train.steps=abc", "config key 'train.steps': expected int"),
        ("train.steps=1.5", "expected int"),
        ("model.remat=maybe", "'model.remat': must be one of ('none', 'dots', 'full')"),
        ("model.scan_layers=maybe", "expected a bool"),
        ("model.attention=splash", "'model.attention': must be one of ('xla', 'cudnn', 'flash')"),
        ("model.attention=cudnn", "cudnn flash attention takes bfloat16"),
        ("model.stage=acoustic", "model.cond_dim"),
        ("sample.solver=rk4", "sample.solver"),
        ("mesh.shape=(-1,-1,2)", "mesh.shape"),
        ("mesh.rules=(('batch','pod'),)", "unknown mesh axis 'pod'"),
        ("model=3", "is a section"),
        ("optim.lr", "must look like section.key=value"),
        ("data.source=arrayrecord", "data.path"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(C.ConfigError) as err:
        C.load("stage1_tiny", [override])
    assert fragment in str(err.value)


def test_direct_construction_is_validated():
    with pytest.raises(C.ConfigError, match="model.heads"):
        C.Config(model=dataclasses.replace(C.ModelConfig(), heads=7))


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.py")
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(C.ConfigError, match="no get_config"):
        C.load(tmp_path / "bad.py")


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.ckpt_every=0", "train.ckpt_every"),
        ("train.log_every=0", "train.log_every"),
        ("train.steps=-5", "train.steps"),
        ("train.eval_every=-1", "train.eval_every"),
        ("train.eval_batches=0", "train.eval_batches"),
        ("train.keep=0", "train.keep"),
        ("train.keep_every=-10", "train.keep_every"),
        ("train.sample_every=-1", "train.sample_every"),
        ("train.max_nan_in_row=0", "train.max_nan_in_row"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.frames=0", "data.frames"),
        ("data.num_workers=-2", "data.num_workers"),
        ("optim.warmup_steps=-1", "optim.warmup_steps"),
        ("optim.grad_accum=0", "optim.grad_accum"),
        ("model.cond_dim=-4", "model.cond_dim"),
        ("sample.steps=0", "sample.steps"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=1e999", "optim.lr"),
        ("optim.b2=1.0", "optim.b2"),
        ("sample.cfg_scale=-1.0", "sample.cfg_scale"),
        ("sample.temperature=0", "sample.temperature"),
        ("sample.temperature=2.5", "sample.temperature"),
        ("data.acoustic_rate=0.0", "data.acoustic_rate"),
    ],
)
def test_counts_and_intervals_are_validated_up_front(override, key):
    """Zero/negative intervals and counts are refused when the config is built, naming the key, on one line."""
    with pytest.raises(C.ConfigError) as err:
        C.load("stage1_tiny", [override])
    msg = str(err.value)
    assert msg.startswith(f"config key '{key}': must be ") and "\n" not in msg
    if key in ("train.ckpt_every", "train.log_every"):
        assert msg == (f"config key '{key}': must be an integer >= 1 (steps between "
                       f"{'checkpoints' if key == 'train.ckpt_every' else 'log lines'}), got 0: set e.g. --set {key}=1")


def test_zero_off_switches_stay_valid():
    cfg = C.load("stage1_tiny", ["train.eval_every=0", "train.sample_every=0", "train.keep_every=0",
                                            "optim.warmup_steps=0", "optim.grad_clip=0.0", "data.num_workers=0"])
    assert (cfg.train.eval_every, cfg.train.sample_every, cfg.optim.warmup_steps) == (0, 0, 0)


@pytest.mark.parametrize("shape", ["('a',1,1)", "(1.5,1,1)", "(True,1,1)", "(1,1)"])
def test_mesh_shape_with_non_integers_is_a_config_error(shape):
    with pytest.raises(C.ConfigError) as err:
        C.load("stage1_tiny", [f"mesh.shape={shape}"])
    msg = str(err.value)
    assert msg.startswith("config key 'mesh.shape': ") and "mesh.shape=(-1,1,1)" in msg and "\n" not in msg


def test_mesh_shape_entry_named_in_the_error():
    with pytest.raises(C.ConfigError, match=r"entry 'data' must be an integer .*got 'a'"):
        C.load("stage1_tiny", ["mesh.shape=('a',1,1)"])


def test_json_config_with_a_string_count_is_refused():
    data = C.to_dict(C.load("stage1_tiny"))
    data["train"]["ckpt_every"] = "100"
    with pytest.raises(C.ConfigError, match=r"config key 'train.ckpt_every': must be an integer >= 1 .*got '100'"):
        C.from_dict(data)
