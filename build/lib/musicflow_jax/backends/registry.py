"""The registry of feature-backend parts: (stream, kind, engine) -> the part module's `build(spec, folder)`.

Engines: "jax" (the runtime: Flax ports and weight-free parts) and "torch" (the PyTorch references of the
weight-based parts, used offline by precompute --engine torch; the weight-free parts are the same under both).
A backend is named "<semantic kind>+<acoustic kind>"; any semantic part pairs with any acoustic part.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from musicflow_jax.backends import chroma, encodec, hubert, mel, torch_ref
from musicflow_jax.backends.parts import BackendError, Builder

ENGINES = ("jax", "torch")
PARTS: dict[tuple[str, str, str], Builder] = {
    ("semantic", "chroma", "jax"): chroma.build, ("semantic", "chroma", "torch"): chroma.build,
    ("semantic", "hubert", "jax"): hubert.build, ("semantic", "hubert", "torch"): torch_ref.build_hubert,
    ("acoustic", "mel", "jax"): mel.build, ("acoustic", "mel", "torch"): mel.build,
    ("acoustic", "encodec", "jax"): encodec.build, ("acoustic", "encodec", "torch"): torch_ref.build_encodec,
}


def kinds(stream: str) -> list[str]:
    return sorted({k for s, k, _ in PARTS if s == stream})


def build_part(stream: str, spec: dict[str, Any], folder: Any = None, engine: str = "jax") -> Any:
    """The `stream` part described by `spec` ({"kind": ..., ...}); relative file paths start at `folder`."""
    kind = spec.get("kind")
    if (stream, kind, engine) not in PARTS:
        raise BackendError(f"unknown {stream} part kind {kind!r} for engine {engine!r}; choose one of "
                           f"{', '.join(kinds(stream))}")
    return PARTS[(stream, kind, engine)](spec, folder)


def parse_name(name: str) -> tuple[str, str]:
    """"hubert+encodec" -> ("hubert", "encodec"), checked against the registry."""
    sem, _, ac = name.partition("+")
    if not sem or not ac or sem not in kinds("semantic") or ac not in kinds("acoustic"):
        raise BackendError(f"backend {name!r}: give SEMANTIC+ACOUSTIC with SEMANTIC in {kinds('semantic')} and "
                           f"ACOUSTIC in {kinds('acoustic')}, e.g. hubert+encodec or chroma+mel")
    return sem, ac


@dataclasses.dataclass(frozen=True)
class PartFiles:
    """The files of the weight-based parts as a user names them (command-line flags): a HuBERT folder, its
    `hidden_states` layer and k-means codebook; an Encodec folder. Weight-free parts need none."""

    hubert: str | None = None
    layer: int | None = None
    kmeans: str | None = None
    encodec: str | None = None


# kind -> (spec key, PartFiles field, required) of every file setting the kind reads
FILE_SETTINGS = {"hubert": (("folder", "hubert", True), ("layer", "layer", True), ("kmeans", "kmeans", False)),
                 "encodec": (("folder", "encodec", True),)}


def with_files(spec: dict[str, Any], files: PartFiles, what: str, *, new_folders: bool = False) -> dict[str, Any]:
    """`spec` ({"kind": ..., ...}) with the file settings its kind reads taken from `files` where given (a setting the
    spec already has, e.g. the layer of an index's backend, is kept when `files` has none, except a weight folder
    with `new_folders`: an index names the folders precompute read, possibly HF ones the runtime cannot load); a
    required one missing is a BackendError naming the flags (`what` names the backend in the message)."""
    out, missing = dict(spec), []
    for key, field, required in FILE_SETTINGS.get(out.get("kind", ""), ()):
        value = getattr(files, field)
        if value is not None:
            out[key] = int(value) if key == "layer" else str(value)
        elif required and (out.get(key) is None or (new_folders and key == "folder")):
            missing.append(f"--{field}")
        else:
            out.setdefault(key, None)
    if missing:
        raise BackendError(f"{what} (a {out['kind']} part) needs {' and '.join(missing)}")
    return out
