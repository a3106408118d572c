"""Weight-free per-clip descriptors: an embedding for a corpus-internal Fréchet-distance proxy, and the instrument
classifier that tests/test_bundled.py introduced (fit on reference clips, predict generated ones).

`proxy_embedding` (197 numbers per clip, any sample rate; frames at 100/s):
- [0:128]   mean and std over frames of the log-mel power spectrum (64 HTK bands, 30 Hz - min(8 kHz, sr / 2),
            dB, floored 80 dB below the clip's peak - the onset front end of musicflow_jax.evaluate.music);
- [128:168] mean and std of the first 20 MFCCs (orthonormal DCT-II of those dB log-mel frames);
- [168:192] mean and std of the 12 chroma bins (`music.chroma`: ChromaSemantic, 110 Hz - 1 kHz);
- [192:197] onset strength mean and std, onsets per second, mean spectral flatness, note presence.
This is NOT a VGGish/PANNs embedding: FD on it is a proxy for comparing runs on the same corpus, not comparable
with published FAD/FD numbers.

`InstrumentClassifier`: standardised features -> multinomial logistic regression (C = 0.1, max_iter 5000), the
model of tests/test_bundled.py; `instrument_features` gives its feature, the clip's mean log-mel magnitude from the
"mel" acoustic part (musicflow_jax.backends.mel, the bundled model's acoustic stream: 24 kHz, n_fft 1024, hop 320,
64 bands 0 - 12 kHz), the `mean_logmel` of the bundled corpus_features.npz.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy.fft import dct

from musicflow_jax.backends.mel import MelAcoustic, MelConfig, mel_filterbank
from musicflow_jax.core.audio import resample
from musicflow_jax.evaluate import music

PROXY_DIM = 197
N_MFCC = 20


def log_mel_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(T, 64) dB log-mel power frames at 100/s (the onset front end's spectrogram)."""
    hop = int(round(sample_rate / music.ONSET_RATE))
    p = music.power_spectrogram(audio, sample_rate, 1024, hop)
    fb = mel_filterbank(MelConfig(sample_rate=sample_rate, n_fft=1024, hop_length=hop, n_mels=64, fmin=30.0,
                                  fmax=min(8000.0, sample_rate / 2)))
    db = 10.0 * np.log10(np.maximum(p @ fb.T.astype(np.float64), 1e-10))
    return np.maximum(db, db.max() - 80.0)


def proxy_embedding(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(PROXY_DIM,) float64 descriptor of one mono clip (see the module docstring for the layout)."""
    x = np.asarray(audio, np.float32)
    db = log_mel_db(x, sample_rate)
    mfcc = dct(db, type=2, norm="ortho", axis=1)[:, :N_MFCC]
    chroma = music.chroma(x, sample_rate)
    env = music.onset_strength(x, sample_rate)
    flat, _ = music.spectral_flatness(x, sample_rate)
    seconds = x.shape[-1] / sample_rate
    onset_rate = music.detect_onsets(x, sample_rate).size / seconds
    tail = [env.mean(), env.std(), onset_rate, flat.mean(), music.note_presence(x, sample_rate)]
    out = np.concatenate([db.mean(0), db.std(0), mfcc.mean(0), mfcc.std(0), chroma.mean(0), chroma.std(0), tail])
    return out.astype(np.float64)


def instrument_features(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(64,) mean over frames of the "mel" acoustic part's log-mel of one mono clip (resampled to 24 kHz)."""
    part = MelAcoustic()
    x = resample(np.asarray(audio, np.float32), sample_rate, part.sample_rate)
    return np.asarray(part.encode(x[None]))[0].mean(0).astype(np.float64)


_INSTRUMENT_RE = re.compile(r"\bplayed on (.+?)\s*\.?$")


def parse_instrument(text: str) -> str | None:
    """The instrument phrase of a caption ("... played on a church organ" -> "a church organ"), or None."""
    m = _INSTRUMENT_RE.search(text.strip())
    return m.group(1) if m else None


class InstrumentClassifier:
    """StandardScaler + LogisticRegression(C=0.1, max_iter=5000) over per-clip features (scikit-learn: the `data`
    extra)."""
    def __init__(self, c: float = 0.1):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=c))

    def fit(self, features: np.ndarray, labels: Sequence[str]) -> InstrumentClassifier:
        x, y = np.asarray(features, np.float64), np.asarray(labels)
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"instrument classifier: features {x.shape} and {y.shape[0]} labels must pair row by "
                             "row")
        if np.unique(y).size < 2:
            raise ValueError(f"instrument classifier: the reference clips name {np.unique(y).size} instrument(s); "
                             "fit on clips of at least 2 instruments")
        self.model.fit(x, y)
        return self

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.model.classes_]

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict(np.asarray(features, np.float64))

    def accuracy(self, features: np.ndarray, labels: Sequence[str]) -> float:
        """Share of clips whose predicted instrument is their caption's."""
        return float(np.mean(self.predict(features) == np.asarray(labels)))
