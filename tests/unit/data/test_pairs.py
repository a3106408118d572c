"""The pairs file (musicflow_jax/data/pairs.py): written and read back bit-exact; inconsistent shapes refused on write;
a file that is not one is a one-line error naming it."""

from __future__ import annotations

import numpy as np
import pytest

from musicflow_jax.data.pairs import PairsFileError, read_pairs, save_pairs


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    z, x = rng.normal(size=(3, 10, 4)).astype(np.float32), rng.normal(size=(3, 10 * 320)).astype(np.float32)
    path = save_pairs(tmp_path / "p.npz", z, x, 24_000, 320)
    got = read_pairs(path)
    assert np.array_equal(got.latents, z) and np.array_equal(got.audio, x)
    assert (got.sample_rate, got.hop_length) == (24_000, 320)
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # written atomically: no temporary left


def test_bad_pairs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"latents \(2, 10, 4\) \(N, T, D\) need audio \(N, T \* 320\)"):
        save_pairs(tmp_path / "p.npz", np.zeros((2, 10, 4)), np.zeros((2, 3000)), 24_000, 320)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PairsFileError, match=r"junk\.npz: not a pairs file") as e:
        read_pairs(tmp_path / "junk.npz")
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "short.npz", latents=np.zeros((2, 10, 4)), audio=np.zeros((2, 3000)), sample_rate=24_000,
             hop_length=320)
    with pytest.raises(PairsFileError, match=r"short\.npz: latents"):
        read_pairs(tmp_path / "short.npz")
