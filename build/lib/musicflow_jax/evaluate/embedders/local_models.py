"""Loading transformers models and processors from local `save_pretrained` folders only (no hub access), with one
one-line error naming the folder and the fix (CLAP, AST)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_local(folder: str | Path, what: str, loaders: tuple[Callable[..., Any], ...], error: type[ValueError],
               required: tuple[str, ...] = ("config.json",)) -> tuple[Any, ...]:
    """`loader(folder, local_files_only=True)` for each loader (e.g. ClapProcessor.from_pretrained,
    ClapModel.from_pretrained); `error` with the folder named when a required file is missing or loading fails."""
    folder = Path(folder)
    missing = [f for f in required if not (folder / f).is_file()]
    if missing:
        raise error(f"{what} folder {folder} has no {', '.join(missing)}: save the model and its processor there "
                    "with save_pretrained (no hub download is attempted)")
    try:
        return tuple(load(folder, local_files_only=True) for load in loaders)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{what} folder {folder}: cannot load it ({msg}); re-save the model and its processor with "
                    "save_pretrained") from None
