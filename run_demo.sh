#!/usr/bin/env bash
# Sets up the environment (cached venv outside the clone) and runs the main job end to end on the embedded
# default: text -> MiniLM (Flax BERT) + tempo/key tokens -> stage 1 ODE -> stage 2 ODE -> decoder -> out/demo.wav (+ out/demo.png),
# with the bundled model (musicflow_jax/assets/bundled/, see its MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv="$(bash .ci/setup_env.sh)"
mkdir -p out
"$venv/bin/python" -m musicflow_jax.generate \
  --text "A Bach chorale in G major at 90 BPM played on a harpsichord" \
  --duration 10 --seed 0 --out out/demo.wav "$@"
echo "wrote out/demo.wav and out/demo.png"
