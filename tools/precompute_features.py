"""Offline feature precompute (PyTorch): manifest -> ArrayRecord shards + index.json for musicflow_jax/data.py.

Per audio file: load (downmix, resample), check (empty / too short / silent), cut into segments of
`--segment-seconds` (a multiple of 40 ms so 50 Hz and 75 Hz frames both start on the segment boundary), and per
segment compute
- semantic: HuBERT `hidden_states[layer]` (HF convention: 0 = transformer input, L = output of layer L) on 16 kHz
  audio, 50 Hz; with `--kmeans`, the unit id of each frame (nearest centroid) and, as the stage-1 target, the
  centroid vector of that unit. MusicFlow models continuous semantic features; taking the centroid of the
  k-means unit keeps the target continuous (flow matching) while dropping the frame-level detail the
  paper's discrete semantic tokens also drop. Without `--kmeans` the raw hidden states are stored (units -1).
- acoustic: Encodec `encoder(audio)` on 24 kHz audio, i.e. the continuous latent *before* the RVQ, 75 Hz.
- optional T5 encoder output of the caption (`--t5`), tokenized with musicflow_jax.tokenizer.
Records follow musicflow_jax/records.py. Work splits over `--num-shards N --shard-index i` with no coordination;
a shard is written atomically and marked done (`_done/shard-i-of-N.json`), so reruns skip it and a crash loses no
finished shard. The process that sees every shard done merges `index.json` and `failures.jsonl`.

    python tools/precompute_features.py --manifest data/corpus/manifest.jsonl --out data/features \
        --hubert ckpt/hubert --encodec ckpt/encodec --kmeans ckpt/kmeans.safetensors --layer 6 [--t5 ckpt/t5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musicflow_jax import records  # noqa: E402
from musicflow_jax.audio import read_audio, resample  # noqa: E402  (the resampler generation uses on prompt audio)
from musicflow_jax.codebook import checkpoint_sha256, load_codebook  # noqa: E402
from musicflow_jax.manifest import Entry, Problem, read_manifest  # noqa: E402
from musicflow_jax.tokenizer import load_tokenizer  # noqa: E402

HUBERT_RATE, ENCODEC_RATE = 16_000, 24_000
SEMANTIC_HZ, ACOUSTIC_HZ = 50.0, 75.0
SEGMENT_QUANTUM_S = 0.04  # 2 semantic frames = 3 acoustic frames


class SkipClipError(Exception):
    """An input that is skipped with a reason (it goes to the failures file)."""


# ----------------------------------------------------------------------------------------- audio


def load_audio(path: str, min_seconds: float = 1.0, silence_rms: float = 1e-4) -> tuple[np.ndarray, int]:
    """Mono float32 audio at its own rate (read and downmixed by musicflow_jax.audio.read_audio, as generation
    reads prompts); raises SkipClipError(reason) for missing/unreadable/empty/short/silent."""
    try:
        x, sr = read_audio(path)
    except FileNotFoundError:
        raise SkipClipError("missing file") from None
    except Exception as e:  # noqa: BLE001 - libsndfile raises assorted errors
        raise SkipClipError(f"unreadable audio: {type(e).__name__}: {str(e)[:200]}") from None
    if x.size == 0:
        raise SkipClipError("empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise SkipClipError("audio contains NaN/inf samples")
    if len(x) / sr < min_seconds:
        raise SkipClipError(f"too short: {len(x) / sr:.3f} s < {min_seconds} s")
    if float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < silence_rms:
        raise SkipClipError(f"silent (RMS < {silence_rms})")
    return x, int(sr)


def segments(n_seconds: float, segment_seconds: float, min_seconds: float) -> list[tuple[float, float]]:
    """[start, end) seconds of consecutive segments; the last one is kept if at least `min_seconds` long."""
    seg = max(SEGMENT_QUANTUM_S, round(segment_seconds / SEGMENT_QUANTUM_S) * SEGMENT_QUANTUM_S)
    out, start = [], 0.0
    while start + min_seconds <= n_seconds + 1e-9:
        out.append((start, min(start + seg, n_seconds)))
        start = round(start + seg, 6)
    return out


# ----------------------------------------------------------------------------------------- encoders


def _config_json(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "config.json").read_text())


class HubertLayer:
    """A frozen PyTorch HuBERT read at one `hidden_states` index, with its feature extractor's per-clip waveform
    normalisation (`do_normalize` in preprocessor_config.json) applied first, as HF's feature extractor does."""

    def __init__(self, folder: str | Path, layer: int):
        import torch
        from transformers import HubertModel

        self.torch = torch
        self.model = HubertModel.from_pretrained(folder).eval()
        n_layers = self.model.config.num_hidden_layers
        if not 0 <= layer <= n_layers:
            raise ValueError(f"--layer {layer}: HuBERT at {folder} has hidden states 0..{n_layers}")
        self.layer = layer
        pre = Path(folder) / "preprocessor_config.json"
        self.do_normalize = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.is_file() else False

    def __call__(self, audio_16k: np.ndarray) -> np.ndarray:
        """(N,) float32 @16 kHz -> (T_s, C) float32 hidden states at `layer`."""
        x = audio_16k.astype(np.float32)
        if self.do_normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        with self.torch.no_grad():
            out = self.model(self.torch.from_numpy(x)[None], output_hidden_states=True)
        return out.hidden_states[self.layer][0].numpy().astype(np.float32)


def assign_units(h_tc: np.ndarray, centroids_kc: np.ndarray) -> np.ndarray:
    """Nearest centroid (squared Euclidean, float64) per frame -> int32 (T,)."""
    h, c = h_tc.astype(np.float64), centroids_kc.astype(np.float64)
    d = (h * h).sum(1, keepdims=True) - 2 * h @ c.T + (c * c).sum(1)[None]
    return d.argmin(1).astype(np.int32)


class Encoders:
    """The frozen PyTorch encoders, loaded from local `save_pretrained` folders (the path real weights use)."""

    def __init__(self, hubert: str, encodec: str, layer: int, kmeans: str | None = None, t5: str | None = None,
                 text_max_len: int = 64, threads: int = 0):
        import torch
        from transformers import EncodecModel

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.hubert = HubertLayer(hubert, layer)
        self.encodec = EncodecModel.from_pretrained(encodec).eval()
        ecfg = self.encodec.config
        if ecfg.sampling_rate != ENCODEC_RATE or ecfg.chunk_length_s:
            raise ValueError(f"{encodec}: need the 24 kHz unchunked Encodec (sampling_rate 24000, no chunking), got "
                             f"{ecfg.sampling_rate} Hz chunk_length_s={ecfg.chunk_length_s}")
        self.centroids, kmeta = (load_codebook(kmeans) if kmeans else (None, {}))
        hub_sha = checkpoint_sha256(hubert)
        if kmeans:
            if kmeta.get("layer") not in (None, str(layer)):
                raise ValueError(f"{kmeans} was fitted on HuBERT layer {kmeta['layer']}, not --layer {layer}")
            if kmeta.get("hubert_sha256") not in (None, hub_sha):
                raise ValueError(f"{kmeans} was fitted on another HuBERT checkpoint than {hubert} (sha256 mismatch)")
        self.t5 = self.tokenizer = None
        self.text_max_len = text_max_len
        if t5:
            from transformers import T5EncoderModel

            self.t5 = T5EncoderModel.from_pretrained(t5).eval()
            self.tokenizer = load_tokenizer(t5)
        self.info = {
            "hubert": {"path": str(hubert), "sha256": hub_sha, "layer": layer, "sample_rate": HUBERT_RATE,
                       "do_normalize": self.hubert.do_normalize, "config": _config_json(hubert)},
            "encodec": {"path": str(encodec), "sha256": checkpoint_sha256(encodec), "sample_rate": ENCODEC_RATE,
                        "config": _config_json(encodec)},
            "kmeans": ({"path": str(kmeans), "sha256": checkpoint_sha256(kmeans), "k": int(len(self.centroids)),
                        "metadata": kmeta} if kmeans else None),
            "t5": ({"path": str(t5), "sha256": checkpoint_sha256(t5), "max_len": text_max_len,
                    "tokenizer": type(self.tokenizer).__name__, "config": _config_json(t5)} if t5 else None),
            "semantic_target": "kmeans_centroid" if kmeans else "hubert_hidden",
        }

    def hubert_features(self, audio_16k: np.ndarray) -> np.ndarray:
        """(N,) float32 @16 kHz -> (T_s, C) float32 hidden states at `layer`."""
        return self.hubert(audio_16k)

    def encodec_latents(self, audio_24k: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(N,) float32 @24 kHz -> ((T_a, D) pre-quantisation latents, Encodec input scale or None)."""
        x = self.torch.from_numpy(audio_24k.astype(np.float32))[None, None]
        scale = None
        if self.encodec.config.normalize:  # as EncodecModel._encode_frame does before its encoder
            s = x.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8
            x, scale = x / s, float(s.flatten()[0])
        with self.torch.no_grad():
            z = self.encodec.encoder(x)
        return z[0].T.numpy().astype(np.float32), scale

    def text(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer([caption], self.text_max_len)
        with self.torch.no_grad():
            out = self.t5(input_ids=self.torch.from_numpy(ids).long(),
                          attention_mask=self.torch.from_numpy(mask).long()).last_hidden_state
        return out[0].numpy().astype(np.float32), mask[0]


# ----------------------------------------------------------------------------------------- per file


def clips_for(entry: Entry, enc: Encoders, segment_seconds: float, min_seconds: float) -> Iterator[records.Clip]:
    """All clips (segments) of one manifest entry; raises SkipClipError for bad inputs."""
    x, sr = load_audio(entry.path, min_seconds)
    a16, a24 = resample(x, sr, HUBERT_RATE), resample(x, sr, ENCODEC_RATE)
    t5 = enc.text(entry.caption) if enc.t5 is not None else (None, None)
    for k, (s0, s1) in enumerate(segments(len(x) / sr, segment_seconds, min_seconds)):
        seg16 = a16[int(round(s0 * HUBERT_RATE)) : int(round(s1 * HUBERT_RATE))]
        seg24 = a24[int(round(s0 * ENCODEC_RATE)) : int(round(s1 * ENCODEC_RATE))]
        h = enc.hubert_features(seg16)
        if enc.centroids is not None:
            units = assign_units(h, enc.centroids)
            sem = enc.centroids[units]
        else:
            units, sem = np.full(len(h), -1, np.int32), h
        ac, _ = enc.encodec_latents(seg24)
        yield records.Clip(semantic=sem, units=units, acoustic=ac, caption=entry.caption, duration=s1 - s0,
                           source=entry.path, start=s0, clip_id=f"{Path(entry.path).stem}#{k}", t5_emb=t5[0],
                           t5_mask=t5[1])


# ----------------------------------------------------------------------------------------- shards


@dataclasses.dataclass
class Summary:
    files_ok: int = 0
    clips_ok: int = 0
    skipped: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def done_marker(out: Path, index: int, count: int) -> Path:
    return out / "_done" / f"shard-{index:05d}-of-{count:05d}.json"


def run_shard(entries: list[Entry], problems: list[Problem], out: Path, index: int, count: int, enc: Encoders,
              segment_seconds: float, min_seconds: float, progress: bool = True) -> dict[str, Any]:
    """Encode this shard's entries (entries[index::count]) into per-split shard files; returns its summary."""
    from tqdm import tqdm

    mine = entries[index::count]
    failures = [dataclasses.asdict(p) for p in problems] if index == 0 else []
    writers: dict[str, records.ClipShardWriter] = {}  # one streaming shard file per split
    s = Summary(skipped=len(failures))
    t0 = time.perf_counter()
    for e in tqdm(mine, desc=f"shard {index}/{count}", disable=not progress):
        try:
            clips = list(clips_for(e, enc, segment_seconds, min_seconds))  # one file's clips; all or none
        except SkipClipError as err:
            failures.append({"where": e.where, "path": e.path, "reason": str(err)})
            s.skipped += 1
            continue
        except Exception as err:  # noqa: BLE001 - an encoder crash on one file must not stop the run
            failures.append({"where": e.where, "path": e.path, "reason": f"failed: {type(err).__name__}: {err}"})
            s.failed += 1
            continue
        s.files_ok += 1
        s.clips_ok += len(clips)
        s.audio_seconds += sum(c.duration for c in clips)
        if e.split not in writers:
            writers[e.split] = records.ClipShardWriter(out / records.shard_name(e.split, index, count))
        for clip in clips:
            writers[e.split].write(clip)
    for w in writers.values():
        w.close()
    s.wall_seconds = time.perf_counter() - t0
    summary = {**dataclasses.asdict(s), "failures": failures, "shard": index, "num_shards": count}
    marker = done_marker(out, index, count)
    marker.parent.mkdir(exist_ok=True)
    records.atomic_write_text(marker, json.dumps(summary))
    return summary


def merge(out: Path, count: int, info: dict[str, Any]) -> dict[str, Any] | None:
    """If all `count` shards are done: write index.json and failures.jsonl, return the totals; else None."""
    markers = [done_marker(out, i, count) for i in range(count)]
    if not all(m.is_file() for m in markers):
        return None
    sums = [json.loads(m.read_text()) for m in markers]
    failures = [f for s in sums for f in s["failures"]]
    (out / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    totals = {k: sum(s[k] for s in sums) for k in ("files_ok", "clips_ok", "skipped", "failed", "audio_seconds")}
    records.merge_index(out, {**info, "totals": totals, "num_shards": count})
    reasons: dict[str, int] = {}
    for f in failures:
        key = f["reason"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return {**totals, "reasons": reasons}


def precompute(manifest: str | Path, out: str | Path, *, hubert: str | None = None, encodec: str | None = None,
               layer: int | None = None, kmeans: str | None = None, t5: str | None = None, text_max_len: int = 64,
               num_shards: int = 1, shard_index: int | None = None, segment_seconds: float = 20.0,
               min_seconds: float = 1.0, threads: int = 0, progress: bool = True,
               backend: str = "hubert-encodec") -> dict[str, Any]:
    """Run the shard(s) this process owns (all if shard_index is None), then merge if everything is done.

    backend "hubert-encodec" (the real one: HuBERT semantic + Encodec latents, needs hubert/encodec/layer) or
    "mel" (the weight-free alternative of musicflow_jax/backends/mel.py: chroma semantic + log-mel acoustic).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, problems = read_manifest(manifest)
    if backend == "mel":
        from musicflow_jax.backends.mel import MelFeatureEncoders

        enc: Any = MelFeatureEncoders()
        dims = enc.dims
    elif backend == "hubert-encodec":
        if hubert is None or encodec is None or layer is None:
            raise ValueError("backend hubert-encodec needs --hubert, --encodec and --layer")
        enc = Encoders(hubert, encodec, layer, kmeans, t5, text_max_len, threads)
        dims = {"semantic": int(enc.centroids.shape[1]) if enc.centroids is not None
                else int(enc.hubert.model.config.hidden_size),
                "acoustic": int(enc.encodec.config.hidden_size),
                "t5": int(enc.t5.config.d_model) if enc.t5 is not None else None}
    else:
        raise ValueError(f"unknown backend {backend!r}: hubert-encodec | mel")
    info = {"rates": {"semantic": SEMANTIC_HZ, "acoustic": ACOUSTIC_HZ}, "dims": dims,
            "encoders": enc.info, "segment_seconds": segment_seconds, "min_seconds": min_seconds,
            "manifest": str(manifest)}
    mine = range(num_shards) if shard_index is None else [shard_index]
    ran = []
    t0 = time.perf_counter()
    for i in mine:
        if done_marker(out, i, num_shards).is_file():
            ran.append({"shard": i, "skipped_rerun": True})
            continue
        ran.append(run_shard(entries, problems, out, i, num_shards, enc, segment_seconds, min_seconds, progress))
    wall = time.perf_counter() - t0
    audio = sum(r.get("audio_seconds", 0.0) for r in ran)
    result = {"shards_run": [r["shard"] for r in ran if not r.get("skipped_rerun")],
              "shards_skipped": [r["shard"] for r in ran if r.get("skipped_rerun")],
              "clips_ok": sum(r.get("clips_ok", 0) for r in ran), "skipped": sum(r.get("skipped", 0) for r in ran),
              "failed": sum(r.get("failed", 0) for r in ran), "audio_seconds": round(audio, 2),
              "wall_seconds": round(wall, 2), "audio_s_per_wall_s": round(audio / max(wall, 1e-9), 2)}
    merged = merge(out, num_shards, info)
    result["merged"] = merged
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True, help="folder for <split>-*.array_record, index.json, failures.jsonl")
    ap.add_argument("--backend", choices=("hubert-encodec", "mel"), default="hubert-encodec",
                    help="feature backend: HuBERT + Encodec (default), or the weight-free chroma + log-mel one")
    ap.add_argument("--hubert", help="HF save_pretrained folder of a HubertModel (backend hubert-encodec)")
    ap.add_argument("--encodec", help="HF save_pretrained folder of the 24 kHz EncodecModel (hubert-encodec)")
    ap.add_argument("--layer", type=int, help="HuBERT hidden_states index (0 = transformer input; hubert-encodec)")
    ap.add_argument("--kmeans", default=None, help="codebook from tools/fit_kmeans.py (omit: raw hidden states)")
    ap.add_argument("--t5", default=None, help="HF folder of a T5EncoderModel: also store caption embeddings")
    ap.add_argument("--text-max-len", type=int, default=64)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--shard-index", type=int, default=None, help="run only this shard (default: all)")
    ap.add_argument("--segment-seconds", type=float, default=20.0)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    a = ap.parse_args(argv)
    if a.backend == "hubert-encodec" and (a.hubert is None or a.encodec is None or a.layer is None):
        ap.error("--backend hubert-encodec needs --hubert, --encodec and --layer")
    if a.shard_index is not None and not 0 <= a.shard_index < a.num_shards:
        ap.error(f"--shard-index {a.shard_index} not in [0, {a.num_shards})")
    result = precompute(a.manifest, a.out, hubert=a.hubert, encodec=a.encodec, layer=a.layer, kmeans=a.kmeans,
                        t5=a.t5, text_max_len=a.text_max_len, num_shards=a.num_shards, shard_index=a.shard_index,
                        segment_seconds=a.segment_seconds, min_seconds=a.min_seconds, threads=a.threads,
                        backend=a.backend)
    print(json.dumps(result, indent=1))
    if result["merged"] is None:
        print("index.json not written yet: other shards are still missing; the last one to finish merges it")


if __name__ == "__main__":
    main()
