"""The one loader of every run config (flow stages: core/config.py's `Config`; the codec:
training/codec_config.py's `CodecTrainConfig`): config files and names, `--set` overrides, JSON, the hash, and the
check helpers their validations use.

A run config is a frozen dataclass of section dataclasses whose `__post_init__` validates it (raising ConfigError
naming the key and the fix). `configs/<name>.py` files expose `get_config()`; variants derive from a sibling with a
relative import (`from .stage1_base import get_config`) and `dataclasses.replace`. A config is named by its file
(`configs/stage1_tiny.py`, any path) or by its name (`stage1_tiny`): ./configs/ first, then the configs shipped with
the package (installed wheels: musicflow_jax/configs/; a source checkout: the repository's configs/).
Overrides use dotted paths, typed by the dataclass fields: `--set optim.lr=3e-4 --set 'mesh.shape=(2,4,1)'`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import math
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from musicflow_jax.errors import MusicFlowError

C = TypeVar("C")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# where `--config NAME` looks, after ./configs: an installed wheel's copy, then a source checkout's folder
SHIPPED_CONFIGS = (PACKAGE_ROOT / "configs", PACKAGE_ROOT.parent / "configs")


class ConfigError(MusicFlowError):
    """A configuration problem, with a message that names the key and what to do."""


# --------------------------------------------------------------------------- check helpers of the validations


def check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def is_int(value: Any, low: int) -> bool:
    """An int >= low (bools are not ints here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def int_at_least(value: Any, key: str, low: int, what: str) -> None:
    """`value` must be an int >= `low`; the message says what the key is for."""
    check(is_int(value, low), key, f"must be an integer >= {low} ({what}), got {value!r}: set e.g. --set "
                                   f"{key}={max(low, 1)}")


def number_at_least(value: Any, key: str, low: float, what: str, *, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value > low if strict else value >= low)
    bound = f"> {low}" if strict else f">= {low}"
    check(ok, key, f"must be a finite number {bound} ({what}), got {value!r}")


def in_unit_interval(value: Any, key: str) -> None:
    """A number in [0, 1) (Adam betas, EMA decay)."""
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0, key,
          f"must be in [0, 1), got {value!r}")


# --------------------------------------------------------------------------- overrides


def _coerce(value: str, typ: Any, key: str) -> Any:
    """Parse the string `value` of an override into the field's declared type."""
    origin = typing.get_origin(typ)
    if typ is bool:
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key '{key}': expected a bool (true/false), got {value!r}")
    if typ is str:
        return value
    if typ in (int, float):
        try:
            num = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}") from None
        if isinstance(num, bool) or not isinstance(num, (int, float)) or (typ is int and not isinstance(num, int)):
            raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {value!r}")
        return typ(num)
    if origin in (typing.Union, types.UnionType) or origin is tuple:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        if origin is tuple and not isinstance(parsed, (tuple, list)):
            raise ConfigError(f"config key '{key}': expected a tuple like (1, 2), got {value!r}")
        return tuple(tuple(p) if isinstance(p, list) else p for p in parsed) if origin is tuple else parsed
    raise ConfigError(f"config key '{key}': unsupported field type {typ}")


def _set_in_dict(cls: type, data: dict[str, Any], path: list[str], value: str, full: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key '{full}': no field '{head}' in {cls.__name__}; "
                          f"valid keys: {', '.join(names)}")
    typ = typing.get_type_hints(cls)[head]
    if dataclasses.is_dataclass(typ):
        if len(path) == 1:
            first = dataclasses.fields(typ)[0].name
            raise ConfigError(f"config key '{full}' is a section; set one of its fields, e.g. '{full}.{first}=...'")
        _set_in_dict(typ, data[head], path[1:], value, full)
    elif len(path) > 1:
        raise ConfigError(f"config key '{full}': '{head}' is a value, not a section")
    else:
        data[head] = _coerce(value, typ, full)


def apply_overrides(cfg: C, overrides: Sequence[str]) -> C:
    """Apply `a.b=value` overrides in order, then validate the result once (building it).

    Unknown keys, values of the wrong type and invalid combinations raise ConfigError naming the key.
    """
    data = to_dict(cfg)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value (e.g. optim.lr=3e-4)")
        key, value = ov.split("=", 1)
        _set_in_dict(type(cfg), data, key.strip().split("."), value.strip(), key.strip())
    return from_dict(type(cfg), data)


# --------------------------------------------------------------------------- dicts, JSON, hash


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """The `cls` instance of a dict (JSON lists back to tuples), validated; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)} for {cls.__name__}; valid: {sorted(names)}")
    kwargs = {}
    for name, val in data.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, val)
        elif isinstance(val, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in val)
        else:
            kwargs[name] = val
    return cls(**kwargs)


def from_json(cls: type[C], text: str) -> C:
    return from_dict(cls, json.loads(text))


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- files and names


def available_names() -> list[str]:
    """Config names `--config NAME` can take here."""
    folders = (Path.cwd() / "configs", *SHIPPED_CONFIGS)
    return sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.py") if not p.stem.startswith("_")})


def resolve(spec: str | Path) -> Path:
    """The file of a config given as a path or a name (see the module docstring)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    if path.suffix != ".py" and "/" not in name and "\\" not in name:
        for folder in (Path.cwd() / "configs", *SHIPPED_CONFIGS):
            if (folder / f"{name}.py").is_file():
                return folder / f"{name}.py"
        raise ConfigError(f"config {name!r} is neither a file nor a known config name: give configs/<name>.py or "
                          f"one of {', '.join(available_names())}")
    raise ConfigError(f"config file {path} does not exist (expected configs/<name>.py with get_config())")


def _import_config_module(path: Path) -> types.ModuleType:
    """Import a config file as a module of a package made of its folder, so its relative imports of siblings work
    (the same for a checkout's configs/, an installed copy, or any folder of the user's)."""
    folder = path.resolve().parent
    package = f"_musicflow_configs_{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        assert spec is not None
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[package] = pkg
        if (folder / "__init__.py").is_file():
            assert spec.loader is not None
            spec.loader.exec_module(pkg)
    name = f"{package}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a fresh execution per load: edits to the file are seen
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path} has a syntax error (line {e.lineno}: {e.msg}): fix it") from None
    except ImportError as e:
        raise ConfigError(f"config file {path} cannot import what it needs ({e}): siblings are imported with "
                          "`from .stage1_base import get_config`") from None
    return module


def load_file(spec: str | Path, kinds: tuple[type, ...], hint: str = "") -> Any:
    """Import a config file (or name) and call its `get_config()`; the result must be one of `kinds` (else a
    ConfigError ending with `hint`)."""
    path = resolve(spec)
    if path.suffix != ".py":
        raise ConfigError(f"config file {path} is not a Python file: give a configs/<name>.py (or a name from "
                          "configs/) whose get_config() returns the config")
    module = _import_config_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config() function")
    cfg = module.get_config()
    if not isinstance(cfg, kinds):
        want = " or ".join(f"{k.__module__}.{k.__name__}" for k in kinds)
        raise ConfigError(f"{path}: get_config() must return {want}, got {type(cfg).__name__}{hint}")
    return cfg


def load(spec: str | Path, overrides: Sequence[str] | None = None, kinds: tuple[type, ...] = (),
         hint: str = "") -> Any:
    """A config file (or name) with `--set` overrides applied and validated; `kinds` (default: any run config
    dataclass) restricts what get_config() may return."""
    cfg = load_file(spec, kinds or (object,), hint)
    if not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{spec}: get_config() must return a run config dataclass, got {type(cfg).__name__}")
    return apply_overrides(cfg, list(overrides or []))
