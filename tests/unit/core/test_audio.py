"""Audio I/O: resampling accuracy, downmix, WAV round trip and metadata stored in the RIFF INFO chunk."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from musicflow_jax.core.audio import AudioError, read_audio, read_wav_info, read_wav_metadata, resample, write_wav


def _sine(freq: float, sr: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def test_resample_sine_matches_analytic():
    x = _sine(440.0, 48_000, 0.5)
    y = resample(x, 48_000, 16_000)
    assert y.shape == (8000,) and y.dtype == np.float32
    ref = _sine(440.0, 16_000, 0.5)
    # away from the edges the polyphase filter reproduces the band-limited sine closely
    assert np.abs(y[200:-200] - ref[200:-200]).max() < 2e-3


def test_write_read_roundtrip_with_metadata(tmp_path):
    sr = 24_000
    stereo = np.stack([_sine(220.0, sr, 0.2), _sine(330.0, sr, 0.2)])
    meta = {"text": "lo-fi beat, café ☕, 90 bpm", "seed": 1234, "config_hash": "ab12cd34", "cfg_scale": 3.0}
    path = write_wav(tmp_path / "out" / "a.wav", stereo, sr, metadata=meta)
    assert read_wav_metadata(path) == meta
    assert read_wav_info(path)["INAM"] == meta["text"]
    # the file stays a valid WAV that libsndfile reads, with the audio intact (16-bit quantisation only)
    data, sr_back = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr_back == sr and data.shape == (stereo.shape[1], 2)
    assert np.abs(data.T - stereo).max() <= 1.0 / 32768 + 1e-7
    st, _ = read_audio(path, mono=False)
    np.testing.assert_allclose(st, data.T)
    mono, _ = read_audio(path)
    np.testing.assert_allclose(mono, data.mean(1), atol=1e-7)


def test_read_audio_resamples_and_downmixes(tmp_path):
    sr = 44_100
    x = np.stack([_sine(300.0, sr, 0.3), -_sine(300.0, sr, 0.3) * 0.5])
    write_wav(tmp_path / "b.wav", x, sr, subtype="FLOAT")
    y, sr_out = read_audio(tmp_path / "b.wav", sample_rate=16_000)
    assert sr_out == 16_000 and y.shape == (int(0.3 * 16_000),)
    ref = 0.25 * _sine(300.0, 16_000, 0.3)  # downmix: (s - s / 2) / 2 = s / 4
    assert np.abs(y[200:-200] - ref[200:-200]).max() < 2e-3
    two, _ = read_audio(tmp_path / "b.wav", mono=False, channels=1)
    assert two.shape == (1, x.shape[1])
    assert read_wav_metadata(tmp_path / "b.wav") == {}


def test_read_audio_errors_are_clear(tmp_path):
    with pytest.raises(AudioError, match="missing.wav"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="bad.wav"):
        read_audio(tmp_path / "bad.wav")


def test_long_text_is_stored_once_and_capped(tmp_path):
    from musicflow_jax.core.audio import MAX_TEXT_CHARS

    text = "a slow piano piece " * 100_000  # 1.9 MB of text
    path = write_wav(tmp_path / "a.wav", _sine(220.0, 24_000, 0.1), 24_000, metadata={"text": text, "seed": 1})
    assert path.stat().st_size < 24_000 * 0.1 * 2 + 3 * MAX_TEXT_CHARS  # audio + the capped text, not 2x the text
    meta = read_wav_metadata(path)
    assert meta["text"] == text[:MAX_TEXT_CHARS] and meta["text_chars"] == len(text) and meta["seed"] == 1


def test_exported_safetensors_follow_the_umask(tmp_path):
    import os

    from musicflow_jax.utils.atomic_io import save_safetensors

    old = os.umask(0o022)
    try:
        path = save_safetensors(tmp_path / "w.safetensors", {"x": np.zeros(3, np.float32)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name != "w.safetensors"]  # no temp file left
