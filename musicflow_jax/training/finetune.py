"""Fine-tuning in the trainer: which base parameters train (`train.trainable`, LoRA: the adapters), the frozen
rest kept out of the optimizer and the checkpoints, and `train.init_from` (an exported stage or another run's
checkpoint, checked strictly against the model, fingerprinted so a resumed run refuses a changed file).

The train state's `params` (what the optimizer and the EMA see) holds the trainable base parameters and the
adapters (musicflow_jax/models/lora.py); the frozen base parameters are the state's `frozen`, never written to
checkpoints (they are train.init_from's weights, loaded again on resume; `fingerprint` guards against that file
changing).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicflow_jax.core.config import Config
from musicflow_jax.models.lora import FineTuneError, is_adapter
from musicflow_jax.models.params import key_of


def is_active(cfg: Config) -> bool:
    """Whether the run trains only part of the model (LoRA and/or train.trainable)."""
    return cfg.model.lora_rank > 0 or bool(cfg.train.trainable)


def trainable_keys(params: nnx.State, cfg: Config) -> set[str]:
    """Base parameters that train: all without fine-tuning options, those train.trainable matches with it (none by
    default when LoRA is on: the adapters alone train)."""
    keys = [key_of(p) for p, _ in nnx.to_flat_state(params)]
    if not is_active(cfg):
        return set(keys)
    if not cfg.train.trainable:
        return set()
    pattern = re.compile(cfg.train.trainable)
    chosen = {k for k in keys if pattern.search(k)}
    if not chosen and cfg.model.lora_rank == 0:
        raise FineTuneError(f"config key 'train.trainable': {cfg.train.trainable!r} matches no parameter, so nothing "
                            f"would train; paths look like {', '.join(keys[:3])}")
    return chosen


def split(params: nnx.State, cfg: Config) -> tuple[nnx.State, nnx.State | None]:
    """(trained tree, frozen base) for this config: (params, None) without fine-tuning options; else the adapters and
    the base parameters train.trainable matches vs the rest."""
    if not is_active(cfg):
        return params, None
    flat = list(nnx.to_flat_state(params))
    train = trainable_keys(nnx.from_flat_state([(p, v) for p, v in flat if not is_adapter(key_of(p))]), cfg)
    trained = [(p, v) for p, v in flat if key_of(p) in train or is_adapter(key_of(p))]
    frozen = [(p, v) for p, v in flat if key_of(p) not in train and not is_adapter(key_of(p))]
    return nnx.from_flat_state(trained), (nnx.from_flat_state(frozen) if frozen else None)


def check_init(expected: dict[str, tuple[int, ...]], flat: dict[str, np.ndarray], source: str,
               partial: bool) -> dict[str, list[str]]:
    """Strict shape check of init_from weights against the model: a wrong shape is an error naming the first
    parameter and both shapes; missing / unexpected parameters are errors unless `partial` (missing ones keep their
    fresh initialisation). With `partial`, a 2-D weight that has more input rows in the model than in the file (a
    stage given a new input, e.g. model.beat's grid appended to the input projection's features) is "grown": see
    `grow`. Returns {"loaded", "grown", "missing", "unexpected"} key lists ("grown" keys are also in "loaded")."""
    grown = []
    for k in sorted(set(expected) & set(flat)):
        have, want = tuple(flat[k].shape), tuple(expected[k])
        if have == want:
            continue
        growable = len(have) == len(want) == 2 and have[1] == want[1] and have[0] < want[0]
        if partial and growable:
            grown.append(k)
            continue
        fix = (" (or set train.init_partial=true to grow it: the new input rows start at zero)" if growable else "")
        raise FineTuneError(f"train.init_from {source} does not fit this model: '{k}' is {have} there but {want} "
                            f"here: use the model config it was trained with{fix}")
    report = {"loaded": sorted(set(expected) & set(flat)), "grown": grown, "missing": sorted(set(expected) - set(flat)),
              "unexpected": sorted(set(flat) - set(expected))}
    if not partial:
        for kind in ("missing", "unexpected"):
            if report[kind]:
                where = "in the model but not in" if kind == "missing" else "in"
                raise FineTuneError(
                    f"train.init_from {source}: {len(report[kind])} {kind} parameter(s), first '{report[kind][0]}' "
                    f"({where} the file{' and not the model' if kind == 'unexpected' else ''}): use the config it was "
                    "trained with, or set train.init_partial=true to load the rest")
    return report


def grow(weight: np.ndarray, rows: int) -> np.ndarray:
    """A (n, d) input weight with zero rows appended to (rows, d): the inputs appended last start ignored, so the
    grown layer computes what the file's did whatever they hold."""
    return np.concatenate([weight, np.zeros((rows - weight.shape[0], weight.shape[1]), weight.dtype)])


def load_values(params: nnx.State, flat: dict[str, Any]) -> nnx.State:
    """`params` with the values of `flat` where it has them (shapes already checked)."""
    return nnx.from_flat_state([(p, v.replace(jnp.asarray(flat[key_of(p)], v[...].dtype)) if key_of(p) in flat else v)
                                for p, v in nnx.to_flat_state(params)])


MAX_HEADER = 100_000_000  # bytes of a safetensors header, the format's own limit


def _safetensors_content(f: Path, h: Any) -> bool:
    """Feed `h` a .safetensors file's content, not its bytes: the metadata and the tensors' names, dtypes, shapes
    and data in sorted order. The writer emits `__metadata__` in a varying key order, so two saves of one model
    differ in bytes. False, with nothing fed, when `f` is no readable safetensors file (a Git LFS pointer, a
    truncated file): the caller hashes its bytes."""
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or not 0 < n <= min(MAX_HEADER, size - 8):
                return False
            header = json.loads(fh.read(n))
            meta = header.pop("__metadata__", None) or {}
            tensors = []
            for name in sorted(header):
                lo, hi = header[name]["data_offsets"]
                if not 0 <= lo <= hi <= size - 8 - n:
                    return False
                tensors.append((json.dumps([name, header[name]["dtype"], header[name]["shape"]]), lo, hi))
            h.update(json.dumps(meta, sort_keys=True).encode())
            for head, lo, hi in tensors:
                h.update(head.encode())
                fh.seek(8 + n + lo)
                for at in range(lo, hi, 1 << 20):
                    h.update(fh.read(min(1 << 20, hi - at)))
    except (ValueError, KeyError, TypeError, AttributeError):  # JSON, a missing field, a non-dict header
        return False
    return True


def fingerprint(path: str | Path, *, by_content: bool = True) -> str:
    """sha256 of an init_from file (or of a folder's files, or a run's latest checkpoint step + config).
    .safetensors files count by content (`_safetensors_content`), so re-exporting the same weights keeps the
    fingerprint; `by_content=False` hashes raw bytes, as runs recorded before 2026-12-05 did."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if path.is_dir() and (path / "checkpoints").is_dir():
        files = sorted(p for p in (path / "checkpoints").rglob("*") if p.is_file() and "metadata" in p.name)
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        if by_content and f.suffix == ".safetensors" and _safetensors_content(f, h):
            continue
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
