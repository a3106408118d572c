"""Spectrograms of real audio vs the model's codec round trip vs generated audio for the same captions (docs/):

    python tools/spectrograms.py --manifest /tmp/heldout/manifest.jsonl --clips 0,5 --out docs/spectrograms.png \
        [--checkpoint bundled] [--compare OLD_MODEL_DIR --compare-label "previous bundled model"] [--seconds 8]

Per clip, top to bottom: the real clip (first `--seconds`), its round trip through the model's backend
(decode(encode_acoustic(audio)), the ceiling of any model on that backend), the model's generation for the clip's
caption (`--seed`, the model's default sampling settings) and, with `--compare`, another model's generation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="a tools/build_corpus.py manifest.jsonl")
    ap.add_argument("--clips", default="0", help="comma-separated manifest rows")
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--checkpoint", default="bundled")
    ap.add_argument("--compare", default=None, help="another model folder, generated for the same captions")
    ap.add_argument("--compare-label", default="other model")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fmax", type=float, default=6000.0, help="highest frequency shown (Hz)")
    a = ap.parse_args(argv)

    from musicflow_jax.data.manifest import read_manifest
    from musicflow_jax.evaluate.model import ceiling_audio, read_window
    from musicflow_jax.inference.cascade import GenerateError, MusicFlow
    from musicflow_jax.utils.plots import spectrogram_panels_png

    if not Path(a.manifest).is_file():
        print(f"error: --manifest {a.manifest} does not exist: pass a tools/build_corpus.py manifest.jsonl",
              file=sys.stderr)
        return 2
    try:
        entries, _ = read_manifest(a.manifest)
        rows = [int(i) for i in a.clips.split(",")]
        chosen = [entries[i] for i in rows]
    except (ValueError, IndexError) as e:
        print(f"error: --clips {a.clips!r} / --manifest {a.manifest}: {' '.join(str(e).split())}; give row numbers "
              "of the manifest", file=sys.stderr)
        return 2
    try:
        models = [("generated", MusicFlow.load(None if a.checkpoint == "bundled" else a.checkpoint))]
        if a.compare:
            models.append((a.compare_label, MusicFlow.load(a.compare)))
    except GenerateError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    mf = models[0][1]
    sr = mf.sample_rate
    panels = []
    for row, e in zip(rows, chosen, strict=True):
        real = read_window(e.path, 0.0, a.seconds, sr)
        panels += [(f"real clip {row}: {e.caption}", real), ("codec round trip (the model's ceiling)",
                                                              ceiling_audio(mf, real))]
        for label, m in models:
            g = m.generate([e.caption], duration=a.seconds, seed=a.seed, progress=False)
            panels.append((f"{label} (seed {a.seed}, default settings)", g.audio[0]))
    print(spectrogram_panels_png(Path(a.out), panels, sr, fmax=a.fmax))
    return 0


if __name__ == "__main__":
    sys.exit(main())
