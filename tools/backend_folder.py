"""Write a backend-only folder (features.json + the parts' files, musicflow_jax.backends) from two part specs, e.g.
the weight-free chroma semantic part with a codec trained by `python -m musicflow_jax.train_codec`:

    python tools/backend_folder.py --semantic '{"kind": "chroma"}' \
        --acoustic '{"kind": "encodec", "folder": "runs/codec/export"}' --out runs/codec/backend
    python -m musicflow_jax.evaluate --checkpoint runs/codec/backend --mode ceiling --manifest M --out eval/codec

(`--mode ceiling` / `halves` accept such folders: the backend's round trip is measured before any flow model is
trained on it.) Bad input: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--semantic", required=True, help='semantic part spec as JSON, e.g. {"kind": "chroma"}')
    ap.add_argument("--acoustic", required=True, help='acoustic part spec as JSON, e.g. {"kind": "encodec", '
                    '"folder": "runs/codec/export"}')
    ap.add_argument("--out", required=True, help="folder to write (features.json + copied part files)")
    a = ap.parse_args(argv)
    from musicflow_jax.backends import BackendError, FeatureBackend, build_part

    try:
        specs = {k: json.loads(v) for k, v in (("semantic", a.semantic), ("acoustic", a.acoustic))}
    except ValueError as e:
        print(f"error: a part spec is not JSON ({e}); quote it, e.g. --semantic '{{\"kind\": \"chroma\"}}'",
              file=sys.stderr)
        return 2
    try:
        parts = {k: build_part(k, v) for k, v in specs.items()}
        out = FeatureBackend(parts["semantic"], parts["acoustic"]).save(a.out)
    except (BackendError, ValueError, OSError, KeyError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
