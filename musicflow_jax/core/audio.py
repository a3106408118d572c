"""Audio I/O: read any soundfile-supported file as float32 (resampled, optionally downmixed), and write WAV
files that carry the generation's metadata (text, seed, config hash, ...) in a RIFF LIST/INFO chunk. WAV files
are written atomically (temporary sibling, then rename).

The metadata is UTF-8 JSON in the INFO `ICMT` (comment) sub-chunk, the caption is also in `INAM` (title) so
ordinary players show it, and `ISFT` names the software. `read_wav_metadata(path)` returns the JSON dict.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from musicflow_jax.errors import MusicFlowError
from musicflow_jax.utils import atomic_io

SOFTWARE = "musicflow_jax"
MAX_TEXT_CHARS = 2000  # prompt text kept in a WAV's metadata (T5 reads far fewer tokens anyway)


class AudioError(MusicFlowError):
    """An audio file that is missing or cannot be decoded; the message names the file."""


def resample(audio: np.ndarray, sr_in: int, sr_out: int, axis: int = -1) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, Kaiser window) along `axis`."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr_in), int(sr_out))
    return resample_poly(audio, sr_out // g, sr_in // g, axis=axis).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Frames, rate and channels from the file's header, without decoding the samples (a one-hour silent FLAC is a
    few hundred KB on disk and gigabytes decoded: check this before reading)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    try:
        info = sf.info(str(path))
    except RuntimeError as e:
        raise AudioError(f"cannot decode audio file {path}: {e}") from e
    if info.samplerate <= 0 or info.channels <= 0 or info.frames < 0:
        raise AudioError(f"audio file {path} has a broken header ({info.frames} frames, {info.samplerate} Hz, "
                         f"{info.channels} channels)")
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def read_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True,
               channels: int | None = None, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """-> (audio, sr): (S,) when mono, else (channels, S), float32 in [-1, 1]. `sample_rate` resamples;
    `channels` (when not mono) duplicates a mono file / downmixes to the requested count (1 or 2). With
    `max_seconds`, a longer file (by its header) is refused before anything is decoded."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} does not exist")
    if max_seconds is not None:
        info = audio_info(path)
        if info.seconds > max_seconds:
            raise AudioError(f"audio file {path} is {info.seconds:.1f} s long ({info.frames} frames at "
                             f"{info.sample_rate} Hz): at most {max_seconds:g} s; cut it first")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    except RuntimeError as e:
        raise AudioError(f"cannot decode audio file {path}: {e}") from e
    x_cs = data.T
    if mono:
        x_cs = x_cs.mean(0, keepdims=True)
    elif channels is not None and channels != x_cs.shape[0]:
        if channels == 1:
            x_cs = x_cs.mean(0, keepdims=True)
        elif x_cs.shape[0] == 1:
            x_cs = np.repeat(x_cs, channels, axis=0)
        else:
            raise AudioError(f"{path}: cannot map {x_cs.shape[0]} channels to {channels}")
    if sample_rate is not None and sample_rate != sr:
        x_cs, sr = resample(x_cs, sr, sample_rate, axis=-1), sample_rate
    x_cs = np.ascontiguousarray(x_cs, np.float32)
    return (x_cs[0] if mono else x_cs), int(sr)


def _info_chunk(metadata: dict[str, Any]) -> bytes:
    def sub(tag: bytes, text: str) -> bytes:
        data = text.encode("utf-8") + b"\x00"
        return tag + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")

    meta = dict(metadata)
    text = meta.pop("text", None)  # stored once, in INAM (players show it as the title), capped
    if text is not None:
        text = str(text)
        if len(text) > MAX_TEXT_CHARS:
            meta["text_chars"] = len(text)  # the full length; INAM keeps the first MAX_TEXT_CHARS characters
            text = text[:MAX_TEXT_CHARS]
    body = b"INFO" + sub(b"ISFT", SOFTWARE) + sub(b"ICMT", json.dumps(meta, sort_keys=True, ensure_ascii=False))
    if text is not None:
        body += sub(b"INAM", text)
    return b"LIST" + struct.pack("<I", len(body)) + body


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, metadata: dict[str, Any] | None = None,
              subtype: str = "PCM_16") -> Path:
    """Write (S,) or (channels, S) float audio; PCM subtypes are clipped to [-1, 1]. `metadata` (JSON-able, e.g.
    {"text": ..., "seed": ..., "config_hash": ...}) goes into the LIST/INFO chunk."""
    import soundfile as sf

    audio = np.asarray(audio, np.float32)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (S,) or (channels, S), got shape {audio.shape}")
    x_sc = audio[:, None] if audio.ndim == 1 else audio.T
    if subtype.startswith("PCM"):
        x_sc = np.clip(x_sc, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x_sc, int(sample_rate), format="WAV", subtype=subtype)
    wav = buf.getvalue()
    if metadata:
        info = _info_chunk(metadata)
        wav = wav[:4] + struct.pack("<I", len(wav) - 8 + len(info)) + wav[8:] + info
    return atomic_io.write_bytes(path, wav)  # a failed write (full disk) leaves no truncated file at `path`


def _chunks(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        tag, size = data[pos: pos + 4], struct.unpack("<I", data[pos + 4: pos + 8])[0]
        yield tag, data[pos + 8: pos + 8 + size]
        pos += 8 + size + (size % 2)


def read_wav_info(path: str | Path) -> dict[str, str]:
    """All RIFF INFO sub-chunks of a WAV file as {tag: text}."""
    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path} is not a RIFF/WAVE file")
    out: dict[str, str] = {}
    for tag, body in _chunks(data, 12, len(data)):
        if tag == b"LIST" and body[:4] == b"INFO":
            for sub_tag, text in _chunks(body, 4, len(body)):
                out[sub_tag.decode("ascii", "replace")] = text.rstrip(b"\x00").decode("utf-8", "replace")
    return out


def read_wav_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dict written by `write_wav` ({} when the file has none)."""
    info = read_wav_info(path)
    if info.get("ISFT") != SOFTWARE or "ICMT" not in info:
        return {}
    meta = json.loads(info["ICMT"])
    if "INAM" in info:  # the text (its first MAX_TEXT_CHARS characters; meta["text_chars"] is its full length)
        meta["text"] = info["INAM"]
    return meta
