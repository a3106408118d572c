"""The grain input pipeline: ArrayRecord shards (or a learnable synthetic source) -> batches of the contract.

Batch (dict of numpy arrays, B = cfg.data.batch_size // process_count, T = cfg.data.frames, L = cfg.text.max_len):
  x1 (B,T,feature_dim) f32 normalised target | frame_mask (B,T) bool | cond (B,T,cond_dim) f32 (stage "acoustic")
  beat (B,T,5) f32 the caption's beat grid on the crop's frames (model.beat; core/beat.py)
  text_ids (B,L) i32 | text_mask (B,L) bool | text_emb (B,L,text.dim) f32 (only if cfg.text.precomputed)

Pipeline (train), defined on the *global* batch so that it does not depend on the number of hosts: source (every
shard, random access) -> seeded global shuffle, reshuffled every epoch, repeated forever -> per-example random crop
seeded by (seed, global position) -> normalise -> pad + frame_mask -> global batch g = positions [g B, (g + 1) B)
-> this host's rows of it, [p B/P, (p + 1) B/P) for process p of P (`HostRows`: the host reads only those records)
-> batch -> optional worker processes. So 1, 2 or 4 processes assemble the same global batches (the hosts' rows are
disjoint and together complete), and the data position is one integer, the number of global batches consumed,
which the train loop keeps equal to the step: `make_dataset(cfg, start_batch=step)` resumes exactly, also onto
another process count (checkpoints store no per-host iterator state).
Eval (`make_eval_dataset`): no shuffle, crops from frame 0, a single pass over the global batches that fit
(drop_remainder), the same number on every host.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np

from musicflow_jax.core import beat, frames
from musicflow_jax.core.config import Config, ConfigError
from musicflow_jax.data import captions
from musicflow_jax.data.records import INDEX_FILE, SCHEMA_VERSION, Clip, RecordError, ShardSource
from musicflow_jax.data.synthetic import SyntheticSource
from musicflow_jax.encoders import meta
from musicflow_jax.encoders.text import text_tokenizer
from musicflow_jax.errors import MusicFlowError

# ----------------------------------------------------------------------------------------- index + records


class DataError(MusicFlowError):
    """A data folder or statistics file that cannot be used (missing index.json or shards, no stats), with the fix."""


def load_index(folder: str | Path) -> dict[str, Any]:
    """Read and check `<folder>/index.json` written by python -m musicflow_jax.precompute."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: run python -m musicflow_jax.precompute (all shards, then it merges "
                                f"the index) or point data.path at the folder holding index.json")
    index = json.loads(path.read_text())
    if index.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"{path}: expected schema version {SCHEMA_VERSION}, found {index.get('schema_version')!r}; "
                          "re-run python -m musicflow_jax.precompute with this code version")
    return index


def check_rates(cfg: Config, index: dict[str, Any]) -> None:
    """The config's frame rates must be the data's (the feature backend defines them, index["rates"])."""
    rates = index.get("rates")
    if rates is None:
        return
    for stream, have in (("semantic", cfg.data.semantic_rate), ("acoustic", cfg.data.acoustic_rate)):
        if float(rates[stream]) != float(have):
            raise ConfigError(f"config key 'data.{stream}_rate' is {have:g} Hz but the features in {cfg.data.path} "
                              f"are {float(rates[stream]):g} Hz ({index.get('backend', {}).get('name', '?')} backend):"
                              f" set data.{stream}_rate={float(rates[stream]):g}")


def shard_paths(folder: str | Path, split: str, index: dict[str, Any] | None = None) -> list[Path]:
    """The split's shard files: those the index lists (only the current precompute's), else every file found."""
    if index is not None and split in index.get("splits", {}):
        return [Path(folder) / s for s in sorted(index["splits"][split]["shards"])]
    paths = sorted(Path(folder).glob(f"{split}-*.array_record"))
    if not paths:
        raise DataError(f"no shards {Path(folder)}/{split}-*.array_record: wrong data.path or data.split?")
    return paths


def index_stats(index: dict[str, Any] | None, stream: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mean, std) of `stream` ("semantic" | "acoustic") from the index; (None, None) = not normalised."""
    if index is None:
        return None, None
    s = index["stats"][stream]
    return np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)


def stats_file(path: str | Path) -> dict[str, Any]:
    """The {"stats": {stream: {"mean", "std"}}} of a model folder's features.json (or the folder) or an index.json:
    data.stats, normalising with a base model's statistics when fine-tuning it on other data."""
    path = Path(path)
    path = path / "features.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
        for stream in ("semantic", "acoustic"):
            if stream in data["stats"]:
                np.asarray(data["stats"][stream]["mean"], np.float32)
        return data
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.stats {path} has no readable feature stats ({type(e).__name__}: {e}): point "
                                "it at a model folder's features.json or a precompute index.json") from None


class ToExample(grain.transforms.RandomMap):
    """Clip -> one unbatched example of the contract (crop, normalise, pad, mask). rng None = crop at frame 0."""

    def __init__(self, cfg: Config, index: dict[str, Any] | None, random_crop: bool = True):
        self.stage2 = cfg.model.stage == "acoustic"
        self.frames, self.rates = cfg.data.frames, (cfg.data.semantic_rate, cfg.data.acoustic_rate)
        self.random_crop, self.precomputed = random_crop, cfg.text.precomputed
        self.varied = cfg.data.captions == "varied"
        self.text_len, self.text_dim = cfg.text.max_len, cfg.text.dim
        self.feature_dim, self.cond_dim = cfg.model.feature_dim, cfg.model.cond_dim
        self.beat = cfg.model.beat
        self.rate = cfg.frame_rate
        stats_index = (stats_file(cfg.data.stats) if cfg.data.stats else index) if cfg.data.normalize else None
        self.sem_stats = index_stats(stats_index, "semantic")
        self.ac_stats = index_stats(stats_index, "acoustic")

    def _check(self, clip: Clip, arr: np.ndarray, dim: int, name: str) -> None:
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise RecordError(f"clip {clip.clip_id!r} ({clip.source}): {name} has shape {arr.shape}, the config "
                              f"expects (T, {dim}); check model.feature_dim/cond_dim against the data index dims")

    def random_map(self, clip: Clip, rng: np.random.Generator) -> dict[str, Any]:
        rng = rng if self.random_crop else None
        if self.stage2:
            self._check(clip, clip.acoustic, self.feature_dim, "acoustic")
            self._check(clip, clip.semantic, self.cond_dim, "semantic")
            start = frames.crop_offset(rng, len(clip.acoustic), self.frames)
            x1, cond, mask = frames.crop_aligned(rng, clip.semantic, clip.acoustic, self.frames, *self.rates, start)
            out = {"x1": frames.normalize(x1, *self.ac_stats) * mask[:, None],
                   "cond": frames.normalize(cond, *self.sem_stats) * mask[:, None]}
        else:
            self._check(clip, clip.semantic, self.feature_dim, "semantic")
            start = frames.crop_offset(rng, len(clip.semantic), self.frames)
            x1, mask = frames.crop_semantic(rng, clip.semantic, self.frames, start)
            out = {"x1": frames.normalize(x1, *self.sem_stats) * mask[:, None]}
        out["frame_mask"] = mask
        out["caption"] = self._caption(clip, rng)
        if self.beat:  # the caption's tempo as a grid; the rendered corpus's beats fall at multiples of 60 / bpm
            bpm = meta.parse_bpm(out["caption"]) or 0.0  # from its audio's start (core/beat.py)
            beat0 = (float(clip.start) + start / self.rate) * bpm / 60.0
            out["beat"] = beat.features(np.asarray([bpm]), np.asarray([beat0]), self.frames, self.rate)[0] * \
                mask[:, None]
        if self.precomputed:
            if clip.t5_emb is None or clip.t5_mask is None:
                raise RecordError(f"clip {clip.clip_id!r} ({clip.source}) has no stored T5 embedding but "
                                  "text.precomputed=True: precompute with --t5 or set text.precomputed=false")
            emb, tmask = frames.pad_or_crop(clip.t5_emb.astype(np.float32), self.text_len)
            if emb.shape[1] != self.text_dim:
                raise RecordError(f"clip {clip.clip_id!r}: stored T5 dim {emb.shape[1]} != text.dim {self.text_dim}")
            tmask &= frames.pad_or_crop(clip.t5_mask.astype(bool), self.text_len)[0]
            out["text_emb"], out["text_mask_pre"] = emb * tmask[:, None], tmask
        return out


    def _caption(self, clip: Clip, rng: np.random.Generator | None) -> str:
        """The clip's caption, or with data.captions="varied" and a random crop, its facts in a drawn wording."""
        if not self.varied:
            return clip.caption
        if clip.facts is None:
            raise RecordError(f"clip {clip.clip_id!r} ({clip.source}) has no facts but data.captions=varied: "
                              "precompute from a manifest whose rows have \"facts\" (build_corpus writes them) or set "
                              "data.captions=as_written")
        return clip.caption if rng is None else captions.draw(clip.facts, rng)


class Collate:
    """Stack examples and tokenize captions (tokenizer built lazily so the object pickles into workers)."""

    def __init__(self, cfg: Config):
        self.checkpoint, self.max_len, self.meta = cfg.text.checkpoint, cfg.text.max_len, cfg.text.meta
        self._tok = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if self._tok is None:
            self._tok = text_tokenizer(self.checkpoint)
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k != "caption"}
        for k in ("x1", "cond", "beat", "text_emb"):
            if k in batch:
                batch[k] = batch[k].astype(np.float32)
        texts = [e["caption"] for e in examples]
        batch["text_ids"], batch["text_mask"] = self._tok(texts, self.max_len)
        if self.meta:  # the tempo / key the caption names: with_text_emb appends their tokens
            batch["text_bpm"], batch["text_key"] = meta.parse(texts)
        if "text_mask_pre" in batch:  # stored T5 output: its own mask is the truth for text_emb
            batch["text_mask"] = batch.pop("text_mask_pre")
        return batch

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}


# ----------------------------------------------------------------------------------------- datasets


class EpochShuffle(grain.MapDataset):
    """Global shuffle, a fresh seeded permutation per epoch (index // len), as grain's `shuffle` but with a cached
    numpy permutation: grain's per-index Feistel shuffle costs ~1-3 ms per element on small datasets."""

    _MAX_CACHED_LEN = 1 << 24  # beyond this (64 MiB of int32 per epoch) use grain's memory-free shuffle

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed, self._n = int(seed), len(parent)
        # (epoch, permutation) of the last even and odd epoch: grain's reader threads call __getitem__ concurrently,
        # and a slot read / write is atomic where a shared dict's evict-then-insert is not.
        self._slots: list[tuple[int, np.ndarray] | None] = [None, None]

    def __len__(self) -> int:
        return self._n

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed})"

    def _perm(self, epoch: int) -> np.ndarray:
        slot = self._slots[epoch % 2]
        if slot is None or slot[0] != epoch:
            slot = (epoch, np.random.default_rng([self._seed, epoch]).permutation(self._n).astype(np.int32))
            self._slots[epoch % 2] = slot
        return slot[1]

    def __getitem__(self, index):  # noqa: ANN001 - grain's int | slice protocol
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(int(index), self._n)
        return self._parent[int(self._perm(epoch)[i]) + epoch * self._n]


def shuffle(ds: grain.MapDataset, seed: int) -> grain.MapDataset:
    return EpochShuffle(ds, seed) if len(ds) <= EpochShuffle._MAX_CACHED_LEN else ds.shuffle(seed=seed % 2**32)


class HostRows(grain.MapDataset):
    """This process's rows of each global batch: element i is the parent's element (i // b) * B + p * b + i % b
    (b = B / P rows for process p of P), so batch g of this view holds rows [p b, (p + 1) b) of global batch g."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._B, self._p = global_batch, process_index
        self._b = global_batch // process_count
        self._n = (len(parent) // global_batch) * self._b

    def __len__(self) -> int:
        return self._n

    def __str__(self) -> str:
        return f"HostRows(B={self._B}, rows {self._p * self._b}..{(self._p + 1) * self._b - 1})"

    def __getitem__(self, index):  # noqa: ANN001 - grain's int | slice protocol
        if isinstance(index, slice):
            return self.slice(index)
        g, r = divmod(int(index), self._b)
        return self._parent[g * self._B + self._p * self._b + r]


def _source(cfg: Config, split: str, seed: int) -> tuple[grain.MapDataset, dict[str, Any] | None]:
    """Every record of `split` (all shards; each host reads only the rows it needs)."""
    if cfg.data.source == "synthetic":
        return grain.MapDataset.source(SyntheticSource(cfg, split, seed)), None
    index = load_index(cfg.data.path)
    check_rates(cfg, index)
    return grain.MapDataset.source(ShardSource(shard_paths(cfg.data.path, split, index))), index


def _per_host_batch(cfg: Config, process_index: int, process_count: int) -> int:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if cfg.data.batch_size % process_count:
        raise DataError(f"data.batch_size={cfg.data.batch_size} must be divisible by the process count "
                         f"{process_count}")
    return cfg.data.batch_size // process_count


def _check_size(cfg: Config, ds: grain.MapDataset, split: str) -> None:
    if len(ds) < cfg.data.batch_size:
        raise DataError(f"split {split!r} has {len(ds)} clips, fewer than one global batch "
                         f"({cfg.data.batch_size}); use more data or a smaller data.batch_size")


def _finish(cfg: Config, ds: grain.MapDataset) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(4, cfg.data.prefetch)),
                                              prefetch_buffer_size=max(1, cfg.data.prefetch)))
    if cfg.data.num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker code reads absl flags; a non-absl main never parsed them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.data.num_workers))
    return it


def _defaults(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        return jax.process_index(), jax.process_count()
    return process_index, process_count


def make_dataset(cfg: Config, split: str | None = None, *, process_index: int | None = None,
                 process_count: int | None = None, seed: int | None = None,
                 start_batch: int = 0) -> grain.IterDataset:
    """Infinite, shuffled training batches for this host, starting at global batch `start_batch` (a resumed run
    passes its step). Every host count sees the same global batches (see the module docstring).

    seed defaults to cfg.data.shuffle_seed; process_index/count default to jax.process_index()/count().
    """
    split = split or cfg.data.split
    process_index, process_count = _defaults(process_index, process_count)
    seed = cfg.data.shuffle_seed if seed is None else seed
    b = _per_host_batch(cfg, process_index, process_count)
    ds, index = _source(cfg, split, seed)
    _check_size(cfg, ds, split)
    ds = shuffle(ds, seed).repeat(None)
    ds = ds.random_map(ToExample(cfg, index, random_crop=True), seed=(seed * 7919) % 2**32)
    ds = HostRows(ds, cfg.data.batch_size, process_index, process_count)
    ds = ds.batch(b, drop_remainder=True, batch_fn=Collate(cfg))
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    return _finish(cfg, ds[start_batch:] if start_batch else ds)


def make_eval_dataset(cfg: Config, split: str = "valid", *, process_index: int | None = None,
                      process_count: int | None = None) -> grain.IterDataset:
    """One deterministic pass over the full global batches of `split`, this host's rows of each: no shuffle,
    crops from frame 0."""
    process_index, process_count = _defaults(process_index, process_count)
    b = _per_host_batch(cfg, process_index, process_count)
    ds, index = _source(cfg, split, cfg.data.shuffle_seed)
    _check_size(cfg, ds, split)
    ds = ds.random_map(ToExample(cfg, index, random_crop=False), seed=0)  # rng unused: crops start at frame 0
    ds = HostRows(ds, cfg.data.batch_size, process_index, process_count)
    ds = ds.batch(b, drop_remainder=True, batch_fn=Collate(cfg))
    return _finish(cfg, ds)
