"""inference/decoder_pairs.py on the bundled model: the pairs' audio is exact crops of the manifest's clips, the
latents are stage 2 run on each crop's own semantic stream (frame-aligned: a crop loud in its first half and silent in
its second decodes over 2.5x louder in the first), and the same seed writes the same file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from musicflow_jax.core.audio import read_audio, write_wav
from musicflow_jax.data.pairs import read_pairs
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.inference.decoder_pairs import PairsError, write_pairs

SR = 24_000


def _half_tone(f0: float, seconds: float) -> np.ndarray:
    """Harmonic tone in the first half of the clip, silence after."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * math.pi * f0 * h * t) / h for h in (1, 2, 3)) * 0.2
    return np.where(t < seconds / 2, x, 0.0).astype(np.float32)


@pytest.mark.slow  # compiles the bundled stage 2 for a 4-s window (~20 s)
def test_pairs_are_stage_2_on_the_clips_own_streams(tmp_path):
    rows = []
    for i, f0 in enumerate((220.0, 330.0)):
        write_wav(tmp_path / f"c{i}.wav", _half_tone(f0, 4.0), SR)
        rows.append({"path": f"c{i}.wav", "caption": "A Bach chorale in A minor at 90 BPM played on a piano",
                     "split": "train"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mf = MusicFlow.load()
    path = write_pairs(mf, manifest, tmp_path / "p.npz", clips=2, seconds=4.0, progress=False)
    p = read_pairs(path)
    assert p.latents.shape == (2, 300, 64) and p.audio.shape == (2, 300 * 320) and p.hop_length == 320
    clips = [read_audio(tmp_path / f"c{i}.wav", SR)[0] for i in range(2)]
    for x in p.audio:  # 4-s clips cut to 4 s: one whole clip each, bit-exact
        assert sum(np.array_equal(x, c) for c in clips) == 1
    assert not np.array_equal(p.audio[0], p.audio[1])
    y = np.asarray(mf.backend.acoustic.codec.decode_latents(p.latents)).reshape(2, -1)
    half = y.shape[1] // 2
    loud, quiet = np.sqrt(np.mean(y[:, 2400:half - 2400] ** 2, 1)), np.sqrt(np.mean(y[:, half + 4800:] ** 2, 1))
    assert np.all(loud > 2.5 * quiet), (loud, quiet)  # measured 3.4x and 3.5x: stage 2 fills silence faintly
    again = read_pairs(write_pairs(mf, manifest, tmp_path / "q.npz", clips=2, seconds=4.0, progress=False))
    assert np.array_equal(again.latents, p.latents)
    with pytest.raises(PairsError, match=r"only 2 readable clips of split 'train' are >= 4 s, 3 asked"):
        write_pairs(mf, manifest, tmp_path / "r.npz", clips=3, seconds=4.0, progress=False)
