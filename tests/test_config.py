"""Configs: every shipped config loads and validates; overrides apply; bad overrides name the key."""

import dataclasses
from pathlib import Path

import pytest

from musicflow_jax import config as C

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.py"))
CONFIGS = [p for p in CONFIGS if p.name != "__init__.py"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load_and_roundtrip(path):
    cfg = C.load(path)
    assert cfg.name == path.stem
    assert C.from_json(C.to_json(cfg)) == cfg
    assert C.config_hash(cfg) == C.config_hash(C.from_json(C.to_json(cfg)))


def test_paper_sizes_and_tiny_derivation():
    s1, s2 = C.load("configs/stage1_base.py"), C.load("configs/stage2_base.py")
    assert (s1.model.depth, s2.model.depth) == (8, 24)
    for m in (s1.model, s2.model):
        assert (m.heads, m.dim, m.mlp_dim) == (12, 768, 3072)
    assert (s1.model.stage, s2.model.stage) == ("semantic", "acoustic")
    t1, t2 = C.load("configs/stage1_tiny.py"), C.load("configs/stage2_tiny.py")
    assert t2.model.cond_dim == t1.model.feature_dim  # stage 2 is conditioned on stage 1's output
    assert t1.flow == s1.flow  # derived, not copied: untouched sections are the base's


def test_overrides_apply_with_types():
    cfg = C.load("configs/stage1_tiny.py", ["optim.lr=3e-4", "mesh.shape=(2,2,2)", "model.remat=true",
                                            "data.source=synthetic", "sample.solver=dopri5", "train.steps=7"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.mesh.shape == (2, 2, 2)
    assert cfg.model.remat is True
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
        ("model.remat=maybe", "expected a bool"),
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
        C.load("configs/stage1_tiny.py", [override])
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
