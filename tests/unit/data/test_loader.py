"""Data pipeline: record schema, frame alignment, the grain loader (order, host sharding, resume) and the
synthetic source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.core import config
from musicflow_jax.core import frames as features
from musicflow_jax.data import loader as data
from musicflow_jax.data import records
from musicflow_jax.testing.records import fake_clip, write_fake_dataset

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def cfg_for(stage: int, *overrides: str) -> config.Config:
    return config.load(CONFIGS / f"stage{stage}_tiny.py", list(overrides))


def take(ds, n: int) -> list[dict[str, np.ndarray]]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------- records


def test_record_roundtrip_exact_and_versioned(tmp_path):
    clip = fake_clip(3, 32, 16, 50)
    back = records.decode_clip(records.encode_clip(clip))
    for k in ("semantic", "units", "acoustic", "t5_emb", "t5_mask"):
        np.testing.assert_array_equal(getattr(back, k), getattr(clip, k))
        assert getattr(back, k).dtype == np.asarray(getattr(clip, k)).dtype
    assert (back.caption, back.duration, back.source, back.clip_id) == (clip.caption, 1.0, "/fake/3.wav", "c3")

    raw = records.encode_clip(clip)
    old = raw.replace(b'"schema_version": 1', b'"schema_version": 0')
    with pytest.raises(records.RecordError, match=r"my\.array_record.*schema version 1.*found schema version 0"):
        records.decode_clip(old, where="my.array_record")
    with pytest.raises(records.RecordError, match="does not start with"):
        records.decode_clip(b"garbage" * 10, where="x")


def test_corrupt_or_mismatched_shard_names_file(tmp_path):
    write_fake_dataset(tmp_path, n_train=6, n_valid=3, shards=1)
    bad = tmp_path / "train-00000-of-00001.array_record"
    bad.write_bytes(b"\x00not an array record file" * 100)
    with pytest.raises(records.RecordError, match=f"{bad}.*schema version {records.SCHEMA_VERSION}"):
        records.ShardSource([bad])
    # a readable shard whose records carry another schema version
    other = tmp_path / "valid-00000-of-00001.array_record"
    recs = [r.replace(b'"schema_version": 1', b'"schema_version": 9') for r in records.read_shard(other)]
    records.write_shard(other, recs)
    cfg = cfg_for(1, "data.source=arrayrecord", f"data.path={tmp_path}", "data.batch_size=2")
    with pytest.raises(records.RecordError, match=f"{other}.*expected .*schema version 1.*found schema version 9"):
        next(iter(data.make_eval_dataset(cfg, "valid", process_index=0, process_count=1)))


def test_index_stats_match_numpy(tmp_path):
    index = write_fake_dataset(tmp_path, n_train=10, n_valid=4, shards=2)
    shards = sorted(tmp_path.glob("train-*.array_record"))
    clips = [records.decode_clip(r) for p in shards for r in records.read_shard(p)]
    assert index["splits"]["train"]["clips"] == 10 and index["splits"]["valid"]["clips"] == 4
    for name in ("semantic", "acoustic"):
        allx = np.concatenate([getattr(c, name) for c in clips]).astype(np.float64)
        np.testing.assert_allclose(index["stats"][name]["mean"], allx.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(index["stats"][name]["std"], allx.std(0), rtol=1e-7)


# ------------------------------------------------------------------------------------------- features


def test_upsample_index_is_floor_of_rate_ratio():
    idx = features.upsample_index(9, 100, 50.0, 75.0)
    np.testing.assert_array_equal(idx, [0, 0, 1, 2, 2, 3, 4, 4, 5])  # floor(i * 50 / 75)
    np.testing.assert_array_equal(features.upsample_index(4, 100, 50.0, 75.0, start=7), [4, 5, 6, 6])
    np.testing.assert_array_equal(features.upsample_index(5, 2, 50.0, 75.0), [0, 0, 1, 1, 1])  # clipped: last frame
    x = np.arange(6, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(features.upsample_nearest(x, 9, 50.0, 75.0)[:, 0], [0, 0, 1, 2, 2, 3, 4, 4, 5])


def test_pad_and_normalize():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out, mask = features.pad_or_crop(x, 5)
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out[3:], 0)
    mean, std = np.array([1.0, 2.0]), np.array([2.0, 0.0])
    y = features.normalize(x, mean, std)
    np.testing.assert_allclose(y, (x - mean) / np.array([2.0, 1e-5]))
    np.testing.assert_allclose(features.denormalize(y, mean, std), x, atol=1e-5)


# ------------------------------------------------------------------------------------------- loader


@pytest.mark.parametrize("stage", [1, 2])
def test_synthetic_batch_contract(stage):
    cfg = cfg_for(stage)
    b = next(iter(data.make_dataset(cfg, "train", process_index=0, process_count=1)))
    B, T, L = cfg.data.batch_size, cfg.data.frames, cfg.text.max_len
    want = {"x1": ((B, T, cfg.model.feature_dim), np.float32), "frame_mask": ((B, T), np.bool_),
            "text_ids": ((B, L), np.int32), "text_mask": ((B, L), np.bool_)}
    if stage == 2:
        want["cond"] = ((B, T, cfg.model.cond_dim), np.float32)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == want
    assert not b["frame_mask"].all() and b["frame_mask"].any(1).all()  # some padded clips, none empty
    np.testing.assert_array_equal(b["x1"][~b["frame_mask"]], 0.0)
    assert b["text_mask"].sum(1).min() > 10  # real captions got tokenized
    if stage == 2:  # the synthetic acoustic stream is a fixed function of the aligned condition
        src = data.SyntheticSource(cfg, "train")
        m = b["frame_mask"]
        np.testing.assert_allclose(b["x1"][m], np.tanh(b["cond"][m] @ src.w_cd) * 1.5, atol=1e-5)


def test_synthetic_precomputed_text():
    cfg = cfg_for(1, "text.precomputed=true")
    b = next(iter(data.make_dataset(cfg, "train", process_index=0, process_count=1)))
    assert b["text_emb"].shape == (8, 32, 32) and b["text_emb"].dtype == np.float32
    np.testing.assert_array_equal(b["text_emb"][~b["text_mask"]], 0.0)
    assert b["text_mask"].any(1).all()


def test_same_seed_same_order_and_other_seed_differs():
    cfg = cfg_for(1)
    a = take(data.make_dataset(cfg, "train", process_index=0, process_count=1, seed=5), 3)
    b = take(data.make_dataset(cfg, "train", process_index=0, process_count=1, seed=5), 3)
    c = take(data.make_dataset(cfg, "train", process_index=0, process_count=1, seed=6), 3)
    assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["x1"], c[0]["x1"])


def test_hosts_split_the_same_global_batches(tmp_path):
    """1, 2 and 3 hosts see the same global batches: host p's batch k is rows [p b, (p + 1) b) of global batch k
    (disjoint, together complete); every epoch holds every record once, reshuffled per epoch; crops are the same."""
    write_fake_dataset(tmp_path, n_train=24, shards=3)
    cfg = cfg_for(1, "data.source=arrayrecord", f"data.path={tmp_path}", "data.normalize=false",
                  "data.batch_size=6")
    one = take(data.make_dataset(cfg, "train", process_index=0, process_count=1), 8)  # 2 epochs of 4 batches
    ids = [b["x1"][:, 0, 0].astype(int) for b in one]
    epoch1, epoch2 = np.concatenate(ids[:4]), np.concatenate(ids[4:])
    assert sorted(epoch1) == sorted(epoch2) == list(range(24))  # each epoch: every record once
    assert not np.array_equal(epoch1, epoch2)  # reshuffled per epoch
    for hosts in (2, 3):
        per_host = [take(data.make_dataset(cfg, "train", process_index=h, process_count=hosts), 8)
                    for h in range(hosts)]
        for k in range(8):
            assert all(len(per_host[h][k]["x1"]) == 6 // hosts for h in range(hosts))
            joined = {key: np.concatenate([per_host[h][k][key] for h in range(hosts)]) for key in one[k]}
            assert_batches_equal([joined], [one[k]])


def test_start_batch_continues_exactly(tmp_path):
    """make_dataset(start_batch=k) yields what the k-th and later batches of a fresh iterator are: the position a
    resumed run passes (its step), across an epoch boundary."""
    write_fake_dataset(tmp_path, n_train=12, shards=2)
    cfg = cfg_for(2, "data.source=arrayrecord", f"data.path={tmp_path}", "data.batch_size=4")
    expected = take(data.make_dataset(cfg, "train", process_index=0, process_count=1, seed=3), 9)[5:]
    resumed = take(data.make_dataset(cfg, "train", process_index=0, process_count=1, seed=3, start_batch=5), 4)
    assert_batches_equal(resumed, expected)
    with pytest.raises(ValueError, match="start_batch"):
        data.make_dataset(cfg, "train", process_index=0, process_count=1, start_batch=-1)


def test_stage2_crops_keep_alignment_and_normalise(tmp_path):
    index = write_fake_dataset(tmp_path, n_train=16, shards=2, ramp=True, n_sem=(40, 200))
    cfg = cfg_for(2, "data.source=arrayrecord", f"data.path={tmp_path}", "data.batch_size=8")
    (mu_a, sd_a), (mu_s, sd_s) = [(np.array(index["stats"][k]["mean"]), np.array(index["stats"][k]["std"]))
                                  for k in ("acoustic", "semantic")]
    starts = set()
    for b in take(data.make_dataset(cfg, "train", process_index=0, process_count=1), 4):
        m = b["frame_mask"]
        ac_frame = np.rint(b["x1"][..., 0] * sd_a[0] + mu_a[0])  # undo normalisation: the acoustic frame index
        sem_frame = np.rint(b["cond"][..., 0] * sd_s[0] + mu_s[0])
        np.testing.assert_array_equal(np.diff(ac_frame, axis=1)[m[:, 1:]], 1)  # contiguous crop
        for r in range(len(m)):  # floor(i * 50 / 75), clipped at the clip's last semantic frame
            want = np.minimum(ac_frame[r, m[r]] * 50 // 75, sem_frame[r, m[r]].max())
            np.testing.assert_array_equal(sem_frame[r, m[r]], want)
        np.testing.assert_array_equal(b["x1"][~m], 0.0)
        np.testing.assert_array_equal(b["cond"][~m], 0.0)
        starts |= set(ac_frame[:, 0].tolist())
    assert len(starts) > 5  # random offsets, not always 0


def test_eval_is_single_deterministic_pass(tmp_path):
    write_fake_dataset(tmp_path, n_train=6, n_valid=10, shards=2)
    cfg = cfg_for(1, "data.source=arrayrecord", f"data.path={tmp_path}", "data.normalize=false",
                  "data.batch_size=4")
    a = list(data.make_eval_dataset(cfg, "valid", process_index=0, process_count=1))
    b = list(data.make_eval_dataset(cfg, "valid", process_index=0, process_count=1))
    assert len(a) == 2  # 10 clips, drop_remainder
    assert_batches_equal(a, b)
    ids = np.concatenate([x["x1"][:, 0, 0] for x in a]).astype(int)
    np.testing.assert_array_equal(ids, np.arange(6, 14))  # valid ids follow train ids, in order


def test_precomputed_text_from_records(tmp_path):
    write_fake_dataset(tmp_path, n_train=6, n_valid=4, shards=1)
    cfg = cfg_for(1, "data.source=arrayrecord", f"data.path={tmp_path}", "text.precomputed=true")
    b = next(iter(data.make_eval_dataset(dataclass_batch(cfg, 4), "valid", process_index=0, process_count=1)))
    clips = [records.decode_clip(r) for r in records.read_shard(tmp_path / "valid-00000-of-00001.array_record")]
    for i, c in enumerate(clips):
        np.testing.assert_array_equal(b["text_mask"][i, :12], c.t5_mask)
        np.testing.assert_array_equal(b["text_emb"][i, :12][c.t5_mask], c.t5_emb[c.t5_mask])
        assert not b["text_mask"][i, 12:].any()


def dataclass_batch(cfg: config.Config, batch_size: int) -> config.Config:
    return config.apply_overrides(cfg, [f"data.batch_size={batch_size}"])


def test_bad_dims_and_batch_errors(tmp_path):
    write_fake_dataset(tmp_path, n_train=6, n_valid=2, shards=1, sem_dim=8)
    cfg = cfg_for(1, "data.source=arrayrecord", f"data.path={tmp_path}", "data.batch_size=2")
    with pytest.raises(records.RecordError, match=r"semantic has shape \(\d+, 8\).*\(T, 32\)"):
        next(iter(data.make_dataset(cfg, "train", process_index=0, process_count=1)))
    with pytest.raises(ValueError, match="divisible by the process count 4"):
        data.make_dataset(cfg_for(1, "data.batch_size=6"), "train", process_index=0, process_count=4)
    with pytest.raises(data.DataError, match="index.json"):
        data.make_dataset(cfg_for(1, "data.source=arrayrecord", f"data.path={tmp_path / 'nope'}"), "train",
                          process_index=0, process_count=1)


def test_worker_processes_match_in_process_and_resume():
    cfg0 = cfg_for(2)
    cfg2 = config.apply_overrides(cfg0, ["data.num_workers=2"])
    ref = take(data.make_dataset(cfg0, "train", process_index=0, process_count=1), 6)
    it = iter(data.make_dataset(cfg2, "train", process_index=0, process_count=1))
    try:
        got = [next(it) for _ in range(6)]
    finally:
        it.close()
    assert_batches_equal(got, ref)
    it = iter(data.make_dataset(cfg2, "train", process_index=0, process_count=1, start_batch=4))
    try:
        assert_batches_equal([next(it) for _ in range(2)], ref[4:])
    finally:
        it.close()
