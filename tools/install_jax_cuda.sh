#!/usr/bin/env bash
# Installs JAX's CUDA plugin (and ptxas) into a cache folder, NOT into the venv: with the plugin importable every JAX
# start on a machine without a GPU tries CUDA first. Only musicflow_jax.pod.topology puts the folder on sys.path, to
# compile for NVIDIA GPUs without one (python -m musicflow_jax.aot --topology h100:8). ~560 MB. Prints the folder.
set -euo pipefail
version=0.10.2  # musicflow_jax/pod/topology.py: JAX_CUDA_VERSION (= requirements.txt's jax)
dir="${MUSICFLOW_CACHE:-$HOME/.cache/musicflow_jax}/jax-cuda-$version"
if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir.tmp"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir.tmp" "jax-cuda12-plugin==$version" \
    "jax-cuda12-pjrt==$version" "nvidia-cuda-nvcc-cu12==12.9.86" >&2
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
echo "$dir"
