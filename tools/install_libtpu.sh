#!/usr/bin/env bash
# Installs the libtpu that jax[tpu]==0.10.2 pins into a cache folder, NOT into the venv: with libtpu importable every
# JAX start on a CPU machine tries to initialise a TPU. Only musicflow_jax.pod.topology points JAX at it
# (TPU_LIBRARY_PATH), for ahead-of-time compilation for TPU topologies (python -m musicflow_jax.aot).
# Prints the path of libtpu.so.
set -euo pipefail
version=0.0.42.1  # musicflow_jax/pod/topology.py: LIBTPU_VERSION
dir="${MUSICFLOW_CACHE:-$HOME/.cache/musicflow_jax}/libtpu-$version"
if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir.tmp"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir.tmp" "libtpu==$version" >&2
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
echo "$dir/libtpu/libtpu.so"
