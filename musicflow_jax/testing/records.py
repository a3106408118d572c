"""Shared test helpers for the data issue: small hand-made record folders with known content."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicflow_jax.data.captions import Facts
from musicflow_jax.data.records import Clip, merge_index, shard_name, write_clip_shard

CAPTIONS = ("a chorale in G minor on a church organ", "a fast piano piece in C major", "a flute duet in A minor")
FACTS = (Facts("bach", "chorale", "G minor", 72, "a church organ"), Facts("bach", "chorale", "C major", 132, "a piano"),
         Facts("bach", "chorale", "A minor", 96, "a flute duet"))


def fake_clip(i: int, sem_dim: int, ac_dim: int, n_sem: int, *, seed: int = 0, ramp: bool = False,
              facts: bool = False) -> Clip:
    """Clip number i. ramp=False: channel 0 of both streams holds the clip id (identity checks);
    ramp=True: channel 0 holds the frame index (alignment checks). Other channels are seeded noise. facts: the clip
    carries FACTS[i % 3] (its caption stays CAPTIONS[i % 3])."""
    rng = np.random.default_rng([seed, i])
    n_ac = int(n_sem * 1.5) + 1  # Encodec gives about one frame more than HuBERT for the same audio
    sem = rng.normal(size=(n_sem, sem_dim)).astype(np.float32)
    ac = rng.normal(size=(n_ac, ac_dim)).astype(np.float32)
    sem[:, 0] = np.arange(n_sem) if ramp else i
    ac[:, 0] = np.arange(n_ac) if ramp else i
    return Clip(semantic=sem, units=rng.integers(0, 8, n_sem).astype(np.int32), acoustic=ac,
                caption=CAPTIONS[i % len(CAPTIONS)], duration=n_sem / 50, source=f"/fake/{i}.wav", clip_id=f"c{i}",
                t5_emb=rng.normal(size=(12, 32)).astype(np.float32), t5_mask=np.arange(12) < 5 + i % 7,
                facts=FACTS[i % len(FACTS)] if facts else None)


def write_fake_dataset(folder: str | Path, *, n_train: int = 24, n_valid: int = 8, shards: int = 3, sem_dim: int = 32,
                       ac_dim: int = 16, n_sem: tuple[int, int] = (30, 120), ramp: bool = False,
                       seed: int = 0, facts: bool = False) -> dict:
    """Write train/valid shards + index.json of fake clips (lengths drawn in n_sem) and return the index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    offset = 0
    for split, n in (("train", n_train), ("valid", n_valid)):
        ids = np.arange(offset, offset + n)
        offset += n
        for s, part in enumerate(np.array_split(ids, shards)):
            clips = [fake_clip(int(i), sem_dim, ac_dim, int(rng.integers(*n_sem)), seed=seed, ramp=ramp, facts=facts)
                     for i in part]
            write_clip_shard(folder / shard_name(split, s, shards), clips)
    return merge_index(folder, {"rates": {"semantic": 50.0, "acoustic": 75.0},
                                "dims": {"semantic": sem_dim, "acoustic": ac_dim}})
