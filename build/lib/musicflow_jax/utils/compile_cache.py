"""JAX's persistent compilation cache in a user cache folder, so a second CLI run (training, generation, the app)
starts with its executables already compiled.

Folder: $MUSICFLOW_JAX_COMPILE_CACHE, else JAX_COMPILATION_CACHE_DIR if the caller set one, else
~/.cache/musicflow_jax/xla; MUSICFLOW_JAX_COMPILE_CACHE=off disables it. Only compilations over
`min_compile_seconds` are written (JAX's own threshold), so eager one-op dispatches do not fill the folder; JAX
evicts the least recently used entries past MAX_BYTES.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

DEFAULT = Path.home() / ".cache" / "musicflow_jax" / "xla"
MAX_BYTES = 4 * 2**30  # least recently used entries are evicted past this


def cache_dir() -> Path | None:
    """The folder the cache uses, or None when disabled."""
    value = os.environ.get("MUSICFLOW_JAX_COMPILE_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if value and value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else DEFAULT


def enable(min_compile_seconds: float = 1.0) -> Path | None:
    """Point JAX at the cache folder (created if missing); returns it, or None when disabled. Call before the first
    compilation."""
    folder = cache_dir()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own variable wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder
