"""Offline precompute with tiny random HuBERT / Encodec / T5 (saved with save_pretrained, loaded like real weights):
parity with direct PyTorch calls, frame alignment, reruns, shard splits, bad inputs, and the k-means codebook."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicflow_jax.backends.registry import PartFiles
from musicflow_jax.backends.torch_ref import assign_units
from musicflow_jax.cli import precompute as pf_cli
from musicflow_jax.core import config
from musicflow_jax.core.audio import resample
from musicflow_jax.data import kmeans as fk
from musicflow_jax.data import loader as data
from musicflow_jax.data import precompute as pf
from musicflow_jax.data import records
from musicflow_jax.encoders import codebook
from musicflow_jax.testing.tiny_models import save_tiny_encodec, save_tiny_hubert, save_tiny_t5

LAYER, K, SEG = 2, 8, 2.0
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(100, 2000, 4))
    x = (x + 0.01 * rng.normal(size=len(t))).astype(np.float32)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    ck = {"hubert": save_tiny_hubert(root / "hubert"), "encodec": save_tiny_encodec(root / "encodec"),
          "t5": save_tiny_t5(root / "t5")}
    au = root / "audio"
    au.mkdir()
    sf.write(au / "a.wav", tone(3.0, 24_000, seed=1), 24_000)
    sf.write(au / "b.wav", tone(2.5, 44_100, channels=2, seed=2), 44_100)  # other rate, stereo
    sf.write(au / "c.flac", tone(4.3, 16_000, seed=3), 16_000)
    sf.write(au / "d.wav", tone(2.2, 24_000, seed=4), 24_000)
    sf.write(au / "short.wav", tone(0.3, 24_000), 24_000)
    sf.write(au / "silent.wav", np.zeros(48_000, np.float32), 24_000)
    sf.write(au / "empty.wav", np.zeros(0, np.float32), 24_000)
    (au / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    good = [("a.wav", "A Bach chorale in G minor on a church organ", "train"),
            ("b.wav", "A piano sonata in C major", "train"), ("c.flac", "A string quartet in D major", "valid"),
            ("d.wav", "A flute solo in A minor", "train")]
    lines = [json.dumps({"path": f"audio/{p}", "caption": c, "split": s}) for p, c, s in good]
    lines += [json.dumps({"path": f"audio/{p}", "caption": "bad"}) for p in
              ("short.wav", "silent.wav", "empty.wav", "garbage.wav", "missing.wav")]
    lines += [json.dumps({"path": "audio/a.wav", "caption": ["not", "a", "string"]}), "this is not json"]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    # k-means codebook from the tiny HuBERT
    feats = fk.hubert_sample(root / "manifest.jsonl", str(ck["hubert"]), LAYER, progress=False)
    cents = fk.fit_kmeans(feats, K, seed=0)
    codebook.save_codebook(root / "km.safetensors", cents, layer=LAYER,
                           hubert_sha256=codebook.checkpoint_sha256(ck["hubert"]))
    kw = dict(files=PartFiles(hubert=str(ck["hubert"]), encodec=str(ck["encodec"]), layer=LAYER,
                              kmeans=str(root / "km.safetensors")),
              t5=str(ck["t5"]), text_max_len=32, cut=pf.Segmenting(SEG), threads=1, progress=False, engine="torch")
    result = pf.precompute(root / "manifest.jsonl", root / "out1", **kw)
    return root, ck, kw, result, feats


def all_clips(folder: Path) -> dict[str, records.Clip]:
    return {c.clip_id: c for p in sorted(folder.glob("*.array_record")) for c in map(records.decode_clip,
                                                                                     records.read_shard(p))}


def test_records_equal_direct_pytorch_calls(setup):
    import torch
    from transformers import EncodecModel, HubertModel, T5EncoderModel

    from musicflow_jax.encoders.tokenizer import load_tokenizer

    root, ck, _, result, _ = setup
    assert result["clips_ok"] == 6 and result["merged"]["files_ok"] == 4
    hub = HubertModel.from_pretrained(ck["hubert"]).eval()
    codec = EncodecModel.from_pretrained(ck["encodec"]).eval()
    t5 = T5EncoderModel.from_pretrained(ck["t5"]).eval()
    cents, meta = codebook.load_codebook(root / "km.safetensors")
    assert meta["layer"] == str(LAYER) and meta["hubert_sha256"] == codebook.checkpoint_sha256(ck["hubert"])
    clips = all_clips(root / "out1")
    assert len(clips) == 6
    for clip in clips.values():
        x, sr = sf.read(clip.source, dtype="float32", always_2d=True)
        x = x.mean(1)
        a16 = resample(x, sr, 16_000)[int(round(clip.start * 16_000)):][: int(round(clip.duration * 16_000))]
        a24 = resample(x, sr, 24_000)[int(round(clip.start * 24_000)):][: int(round(clip.duration * 24_000))]
        with torch.no_grad():
            h = hub(torch.from_numpy(a16)[None], output_hidden_states=True).hidden_states[LAYER][0].numpy()
            z = codec.encoder(torch.from_numpy(a24)[None, None])
            bw = codec.config.target_bandwidths[-1]
            codes_direct = codec.encode(torch.from_numpy(a24)[None, None], bandwidth=bw).audio_codes[0, 0].numpy()
            codes_from_latent = codec.quantizer.encode(z, bw).transpose(0, 1)[0].numpy()
        np.testing.assert_array_equal(codes_from_latent, codes_direct)  # the stored latent is the pre-RVQ one
        np.testing.assert_allclose(clip.acoustic, z[0].T.numpy(), rtol=0, atol=1e-6)
        units = np.linalg.norm(h[:, None] - cents[None], axis=-1).argmin(1)
        np.testing.assert_array_equal(clip.units, units)
        np.testing.assert_allclose(clip.semantic, cents[units], rtol=0, atol=1e-6)
        ids, mask = load_tokenizer(ck["t5"])([clip.caption], 32)
        with torch.no_grad():
            e = t5(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
        np.testing.assert_allclose(clip.t5_emb, e.last_hidden_state[0].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(clip.t5_mask, mask[0])
        # frame counts follow the rates: Encodec ceil(n / 320) at 75 Hz, HuBERT conv stack at 50 Hz
        n16, n24 = len(a16), len(a24)
        assert len(clip.acoustic) == -(-n24 // 320) and len(clip.semantic) == (n16 - 400) // 320 + 1
        assert abs(len(clip.acoustic) * 50 / 75 - len(clip.semantic)) <= 1.0
        assert abs(clip.duration * 75 - len(clip.acoustic)) <= 1
    starts = sorted((c.source.rsplit("/", 1)[1], c.start, round(c.duration, 3)) for c in clips.values())
    # 2-s segments on a 40-ms grid; a tail shorter than min_seconds (1 s) is dropped
    assert starts == [("a.wav", 0.0, 2.0), ("a.wav", 2.0, 1.0), ("b.wav", 0.0, 2.0), ("c.flac", 0.0, 2.0),
                      ("c.flac", 2.0, 2.0), ("d.wav", 0.0, 2.0)]


def test_bad_inputs_are_listed_with_reasons(setup):
    root, *_ = setup
    fails = [json.loads(x) for x in (root / "out1" / "failures.jsonl").read_text().splitlines()]
    by_name = {Path(f["path"]).name if f["path"] else f["where"].rsplit(":", 1)[1]: f["reason"] for f in fails}
    assert by_name["short.wav"].startswith("too short")
    assert by_name["silent.wav"].startswith("silent")
    assert by_name["empty.wav"].startswith("empty audio")
    assert by_name["garbage.wav"].startswith("unreadable audio")
    assert by_name["missing.wav"] == "missing file"
    assert by_name["a.wav"].startswith("caption is not a string")
    assert "not JSON" in by_name["11"]
    assert len(fails) == 7
    index = data.load_index(root / "out1")
    assert index["totals"]["skipped"] == 7 and index["totals"]["clips_ok"] == 6
    assert index["splits"]["train"]["clips"] == 4 and index["splits"]["valid"]["clips"] == 2


def test_index_documents_encoders_and_stats(setup):
    root, ck, _, _, _ = setup
    index = data.load_index(root / "out1")
    assert index["dims"] == {"semantic": 32, "acoustic": 16, "t5": 32}
    assert index["rates"] == {"semantic": 50.0, "acoustic": 75.0}
    enc = index["encoders"]
    assert enc["hubert"]["sha256"] == codebook.checkpoint_sha256(ck["hubert"]) and enc["hubert"]["layer"] == LAYER
    assert enc["encodec"]["config"]["hidden_size"] == 16 and enc["kmeans"]["k"] == K
    train = [c for c in all_clips(root / "out1").values() if Path(c.source).name in ("a.wav", "b.wav", "d.wav")]
    ac = np.concatenate([c.acoustic for c in train]).astype(np.float64)
    np.testing.assert_allclose(index["stats"]["acoustic"]["mean"], ac.mean(0), atol=1e-9)
    np.testing.assert_allclose(index["stats"]["acoustic"]["std"], ac.std(0), rtol=1e-6)


def test_rerun_skips_and_two_way_split_equals_one_way(setup):
    root, _, kw, _, _ = setup
    out1 = root / "out1"
    mtimes = {p: p.stat().st_mtime_ns for p in out1.glob("*.array_record")}
    again = pf.precompute(root / "manifest.jsonl", out1, **kw)
    assert again["shards_run"] == [] and again["shards_skipped"] == [0]
    assert {p: p.stat().st_mtime_ns for p in out1.glob("*.array_record")} == mtimes
    out2 = root / "out2"
    first = pf.precompute(root / "manifest.jsonl", out2, num_shards=2, shard_index=1, **kw)
    assert first["merged"] is None and not (out2 / "index.json").exists()  # waits for shard 0, no coordination
    (out2 / "train-00000-of-00002.array_record.tmp").write_bytes(b"left over by a killed run")
    second = pf.precompute(root / "manifest.jsonl", out2, num_shards=2, shard_index=0, **kw)
    assert second["merged"] is not None and second["merged"]["clips_ok"] == 6
    c1, c2 = all_clips(out1), all_clips(out2)
    assert c1.keys() == c2.keys()
    for k in c1:
        for f in ("semantic", "units", "acoustic", "t5_emb", "t5_mask"):
            np.testing.assert_array_equal(getattr(c1[k], f), getattr(c2[k], f))
    i1, i2 = data.load_index(out1), data.load_index(out2)
    for s in ("semantic", "acoustic"):
        np.testing.assert_allclose(i1["stats"][s]["mean"], i2["stats"][s]["mean"], atol=1e-9)
        np.testing.assert_allclose(i1["stats"][s]["std"], i2["stats"][s]["std"], rtol=1e-9)
    f1 = sorted((root / "out1" / "failures.jsonl").read_text().splitlines())
    assert f1 == sorted((out2 / "failures.jsonl").read_text().splitlines())


def test_kmeans_is_seeded_and_assigns_nearest(setup):
    root, ck, _, _, feats = setup
    again = fk.hubert_sample(root / "manifest.jsonl", str(ck["hubert"]), LAYER, progress=False)
    np.testing.assert_allclose(again, feats, atol=1e-5)  # same files/frames (torch thread count may differ)
    c1, c2 = fk.fit_kmeans(feats, K, seed=0), fk.fit_kmeans(feats, K, seed=0)
    np.testing.assert_array_equal(c1, c2)
    assert c1.shape == (K, 32) and c1.dtype == np.float32
    units = assign_units(feats, c1)
    d = ((feats[:, None].astype(np.float64) - c1[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(units, d.argmin(1))
    assert len(np.unique(units)) == K


def test_loader_reads_precomputed_features(setup):
    root, *_ = setup
    cfg = config.load(CONFIGS / "stage2_tiny.py", ["data.source=arrayrecord", f"data.path={root / 'out1'}",
                                                   "data.batch_size=2", "text.precomputed=true"])
    b = next(iter(data.make_dataset(cfg, "train", process_index=0, process_count=1)))
    assert b["x1"].shape == (2, 96, 16) and b["cond"].shape == (2, 96, 32) and b["text_emb"].shape == (2, 32, 32)
    assert np.isfinite(b["x1"]).all() and b["frame_mask"].any()


def test_mel_backend_records_equal_direct_calls(setup):
    """--backend mel (the weight-free alternative): same shard code, features equal direct backend calls."""
    from musicflow_jax.backends.chroma import ChromaSemantic
    from musicflow_jax.backends.mel import MelAcoustic
    from musicflow_jax.core.audio import read_audio

    root = setup[0]
    pf_cli.main(["--backend", "chroma+mel", "--manifest", str(root / "manifest.jsonl"), "--out", str(root / "mel"),
             "--segment-seconds", "10"])
    index = json.loads((root / "mel" / "index.json").read_text())
    assert index["backend"]["name"] == "chroma+mel"
    sem, ac = ChromaSemantic(), MelAcoustic()
    assert index["dims"]["semantic"] == sem.dim and index["dims"]["acoustic"] == ac.dim
    clip = next(c for c in all_clips(root / "mel").values() if c.source.endswith("a.wav"))
    audio24 = read_audio(root / "audio" / "a.wav", sample_rate=24_000)[0]
    audio16 = read_audio(root / "audio" / "a.wav", sample_rate=16_000)[0]
    np.testing.assert_allclose(clip.acoustic, ac.encode(audio24[None, : clip.acoustic.shape[0] * 320])[0],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(clip.semantic, sem.encode(audio16[None, : clip.semantic.shape[0] * 320])[0][0],
                               rtol=1e-4, atol=1e-4)


_KILL_DRIVER = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from musicflow_jax.data import records
from musicflow_jax.data import precompute as pf

original_write = records.ClipShardWriter.write

def write_then_die(self, clip):
    original_write(self, clip)
    if "-00001-of-00002" in self.path.name:  # hard kill in the middle of shard 1, after shard 0 finished
        os.kill(os.getpid(), signal.SIGKILL)

records.ClipShardWriter.write = write_then_die
from musicflow_jax.backends.registry import PartFiles
kw = json.loads({kw!r})
kw["files"], kw["cut"] = PartFiles(**kw["files"]), pf.Segmenting(**kw["cut"])
pf.precompute({manifest!r}, {out!r}, num_shards=2, **kw)
"""


def test_sigkill_mid_shard_loses_no_finished_shard(setup):
    """A process SIGKILLed in the middle of a shard keeps every finished shard; the rerun redoes only the
    killed one and the result equals an uninterrupted run."""
    import subprocess
    import sys

    root, _, kw, _, _ = setup
    out = root / "killed"
    repo = str(Path(__file__).resolve().parents[3])
    plain = {**kw, "files": dataclasses.asdict(kw["files"]), "cut": dataclasses.asdict(kw["cut"])}
    script = _KILL_DRIVER.format(root=repo, kw=json.dumps(plain), manifest=str(root / "manifest.jsonl"), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert pf.done_marker(out, 0, 2).is_file() and not pf.done_marker(out, 1, 2).is_file()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*-00000-of-00002.array_record")}
    assert finished, "shard 0's files must survive the kill"
    assert not list(out.glob("*-00001-of-00002.array_record")) and list(out.glob("*-00001-of-00002*.tmp"))
    assert not (out / "index.json").exists()
    rerun = pf.precompute(root / "manifest.jsonl", out, num_shards=2, **kw)
    assert rerun["shards_skipped"] == [0] and rerun["shards_run"] == [1]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # untouched
    c_full, c_resumed = all_clips(root / "out1"), all_clips(out)
    assert c_full.keys() == c_resumed.keys()
    for k in c_full:
        np.testing.assert_array_equal(c_full[k].acoustic, c_resumed[k].acoustic)
        np.testing.assert_array_equal(c_full[k].semantic, c_resumed[k].semantic)
    assert rerun["merged"]["clips_ok"] == 6


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-12))


def test_jax_engine_equals_torch_engine_and_shards_resume(setup):
    """--engine jax (Flax ports, HF folders converted on the fly, batched) writes the torch engine's records within
    1e-4 relative and the same failures; a 2-shard jax run in reverse order with another batch size equals one run."""
    root, _, kw, _, _ = setup
    jkw = {**kw, "engine": "jax", "batch_size": 3}
    res = pf.precompute(root / "manifest.jsonl", root / "jax1", **jkw)
    assert res["engine"] == "jax" and res["merged"]["clips_ok"] == 6
    ref, got = all_clips(root / "out1"), all_clips(root / "jax1")
    assert ref.keys() == got.keys()
    for k in ref:
        for f in ("semantic", "acoustic", "t5_emb"):
            assert _rel(getattr(got[k], f), getattr(ref[k], f)) < 1e-4, (k, f)
        np.testing.assert_array_equal(got[k].units, ref[k].units)
        np.testing.assert_array_equal(got[k].t5_mask, ref[k].t5_mask)
        assert (got[k].caption, got[k].start, got[k].duration) == (ref[k].caption, ref[k].start, ref[k].duration)
    assert ((root / "jax1" / "failures.jsonl").read_text().splitlines()
            == (root / "out1" / "failures.jsonl").read_text().splitlines())
    i_t, i_j = data.load_index(root / "out1"), data.load_index(root / "jax1")
    assert i_j["engine"] == "jax" and i_t["engine"] == "torch"
    for key in ("backend", "rates", "dims", "encoders", "splits"):
        assert i_j[key] == i_t[key], key
    for i in (1, 0):  # shard 1 first, then shard 0 merges
        pf.precompute(root / "manifest.jsonl", root / "jax2", **{**jkw, "batch_size": 2}, num_shards=2, shard_index=i)
    sharded = all_clips(root / "jax2")
    assert sharded.keys() == got.keys()
    for k in got:
        for f in ("semantic", "acoustic", "t5_emb"):
            np.testing.assert_allclose(getattr(sharded[k], f), getattr(got[k], f), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(sharded[k].units, got[k].units)


def test_stale_output_folder_is_refused_or_replaced(setup, tmp_path):
    """An --out made by another precompute (other segmenting, shard count, manifest) is refused with one line naming
    what differs; --overwrite replaces it and the index then counts each clip once."""
    root, _, kw, _, _ = setup
    mkw = {k: v for k, v in kw.items() if k not in ("files", "t5", "threads", "engine")}
    out = tmp_path / "f"
    pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", num_shards=2, **mkw)
    n_clips = sum(v["clips"] for v in data.load_index(out)["splits"].values())
    with pytest.raises(pf.PrecomputeError, match=r"differs in: segment_seconds.*--overwrite"):
        pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", num_shards=2,
                      **{**mkw, "cut": pf.Segmenting(1.0)})
    with pytest.raises(pf.PrecomputeError, match="differs in: num_shards"):
        pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", num_shards=1, **mkw)
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join((root / "manifest.jsonl").read_text().splitlines()[:2]) + "\n")
    with pytest.raises(pf.PrecomputeError, match="differs in: manifest_sha256"):
        pf.precompute(other, out, backend="chroma+mel", num_shards=2, **mkw)
    assert sum(v["clips"] for v in data.load_index(out)["splits"].values()) == n_clips  # untouched
    r = pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", num_shards=1, overwrite=True, **mkw)
    index = data.load_index(out)
    assert r["merged"]["clips_ok"] == n_clips and sum(v["clips"] for v in index["splits"].values()) == n_clips
    assert sorted(p.name for p in out.glob("*.array_record")) == ["train-00000-of-00001.array_record",
                                                                   "valid-00000-of-00001.array_record"]
    cfg = config.load(CONFIGS / "stage2_tiny.py", ["data.source=arrayrecord", f"data.path={out}"])
    assert [p.name for p in data.shard_paths(out, "train", index)] == ["train-00000-of-00001.array_record"]
    assert cfg.data.path == str(out)


def test_precompute_cli_input_errors_are_one_line(setup, tmp_path):
    import subprocess
    import sys

    root = setup[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"path": "x.wav", "caption": "caf\xe9"}\nnot json\n')
    repo = Path(__file__).resolve().parents[3]
    cases = [(["--manifest", str(tmp_path / "missing.jsonl")], "does not exist"),
             (["--manifest", str(bad)], "has no usable lines (first: "),
             (["--manifest", str(root / "manifest.jsonl"), "--backend", "wavenet"], "give SEMANTIC+ACOUSTIC"),
             (["--manifest", str(root / "manifest.jsonl")], "needs --hubert and --layer")]
    for args, needle in cases:
        p = subprocess.run([sys.executable, "-m", "musicflow_jax.precompute", "--out", str(tmp_path / "o"), *args],
                           cwd=repo, capture_output=True, text=True, timeout=300)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, p.returncode, p.stderr[-1500:])
    entries, problems = __import__("musicflow_jax.data.manifest", fromlist=["x"]).read_manifest(bad)
    assert not entries and problems[0].reason.startswith("line is not UTF-8 text")


def test_two_processes_on_one_shard(setup, tmp_path):
    """A shard being written by a live process is refused with its owner named; a dead owner's lock is taken over."""
    import subprocess
    import sys

    root, _, kw, _, _ = setup
    mkw = {k: v for k, v in kw.items() if k not in ("files", "t5", "threads", "engine")}
    out = tmp_path / "f"
    lock = pf.done_marker(out, 0, 1).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from musicflow_jax.utils.locks import "
                               "acquire_file; from pathlib import Path; "
                               "acquire_file(Path(sys.argv[1]), 'x', 'y', 'z'); print('held', flush=True); "
                               "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(pf.PrecomputeError, match=rf"shard 0 of 1 in .* is in use by another precompute process "
                                                      rf"\(pid {holder.pid} "):
            pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", **mkw)
        assert not list(out.glob("*.array_record"))
    finally:
        holder.kill()
        holder.wait()
    r = pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", **mkw)  # the dead owner's lock is taken
    assert r["shards_run"] == [0] and r["merged"]["clips_ok"] == 6 and not lock.exists()


def test_assemble_model_from_an_index(setup, tmp_path):
    """The model folder's assemble (python -m musicflow_jax.assemble): the index's backend (HF folders at precompute
    time) + converted encoder folders + two exported stages -> a model folder MusicFlow loads, with the index's
    stats; missing folders: exit 2."""
    import dataclasses
    import subprocess
    import sys

    from flax import nnx

    from musicflow_jax.convert.encodec import convert_encodec
    from musicflow_jax.convert.hubert import convert_hubert
    from musicflow_jax.inference.cascade import MusicFlow, StageSettings
    from musicflow_jax.inference.model_folder import assemble
    from musicflow_jax.models.stage_file import save_stage
    from musicflow_jax.models.transformer import FlowTransformer
    from musicflow_jax.testing.model_folders import tiny_configs

    root, ck, _, _, _ = setup
    hub, enc = convert_hubert(ck["hubert"], tmp_path / "hubert"), convert_encodec(ck["encodec"], tmp_path / "encodec")
    c1, c2 = tiny_configs()
    c1 = dataclasses.replace(c1, model=dataclasses.replace(c1.model, feature_dim=32))
    c2 = dataclasses.replace(c2, model=dataclasses.replace(c2.model, feature_dim=16, cond_dim=32))
    save_stage(tmp_path / "s1.safetensors", c1, FlowTransformer(c1, rngs=nnx.Rngs(0)))
    save_stage(tmp_path / "s2.safetensors", c2, FlowTransformer(c2, rngs=nnx.Rngs(1)))
    index_file = root / "out1" / "index.json"
    folder = assemble(tmp_path / "s1.safetensors", tmp_path / "s2.safetensors", index_file, tmp_path / "model",
                      PartFiles(encodec=str(enc), hubert=str(hub)))
    mf = MusicFlow.load(folder)
    index = data.load_index(root / "out1")
    assert mf.backend.name == "hubert+encodec" and mf.backend.semantic.layer == LAYER
    np.testing.assert_allclose(mf.backend.stats["acoustic"].mean, index["stats"]["acoustic"]["mean"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(mf.backend.semantic.centroids), codebook.load_codebook(
        root / "km.safetensors")[0])
    fast = StageSettings(steps=1, solver="euler", cfg_scale=1.0)
    g = mf.generate(["a flute solo"], 0.5, stage1=fast, stage2=fast, progress=False)
    assert g.audio.shape == (1, 12_000) and np.isfinite(g.audio).all()
    p = subprocess.run([sys.executable, "-m", "musicflow_jax.assemble", "--stage1", str(tmp_path / "s1.safetensors"),
                        "--stage2", str(tmp_path / "s2.safetensors"), "--index", str(index_file), "--out",
                        str(tmp_path / "m2")], cwd=Path(__file__).resolve().parents[3], capture_output=True,
                       text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "needs --hubert" in lines[0], p.stderr[-1500:]


def test_end_aligned_segments_have_equal_length(setup, tmp_path):
    """end_aligned: the tail of a file longer than one segment becomes a full segment ending at the file's end (on
    the 40-ms grid, overlapping the one before); files shorter than a segment keep one short segment; the records
    equal direct backend calls on those exact spans."""
    from musicflow_jax.backends.chroma import ChromaSemantic
    from musicflow_jax.core.audio import read_audio

    assert pf.segments(29.99995833, 8.0, 1.0, end_aligned=True) == [(0.0, 8.0), (8.0, 16.0), (16.0, 24.0),
                                                                      (21.96, 29.96)]
    assert pf.segments(29.99995833, 8.0, 1.0) == [(0.0, 8.0), (8.0, 16.0), (16.0, 24.0), (24.0, 29.99995833)]
    assert pf.segments(16.5, 8.0, 1.0, end_aligned=True) == [(0.0, 8.0), (8.0, 16.0)]  # 0.5-s tail < min_seconds
    assert pf.segments(17.0, 8.0, 1.0, end_aligned=True) == [(0.0, 8.0), (8.0, 16.0), (9.0, 17.0)]
    assert pf.segments(7.5, 8.0, 1.0, end_aligned=True) == [(0.0, 7.5)]
    root = setup[0]
    out = tmp_path / "aligned"
    pf.precompute(root / "manifest.jsonl", out, backend="chroma+mel", cut=pf.Segmenting(2.0, end_aligned=True),
                  progress=False)
    index = json.loads((out / "index.json").read_text())
    assert index["end_aligned"] is True
    assert json.loads((out / pf.FINGERPRINT_FILE).read_text())["end_aligned"] is True  # a rerun without it is refused
    clips = all_clips(out).values()
    a_clips = sorted((c for c in clips if c.source.endswith("a.wav")), key=lambda c: c.start)
    assert [(round(c.start, 2), round(c.duration, 2)) for c in a_clips] == [(0.0, 2.0), (1.0, 2.0)]
    audio16 = read_audio(root / "audio" / "a.wav", sample_rate=16_000)[0]
    tail = a_clips[1]
    np.testing.assert_allclose(tail.semantic, ChromaSemantic().encode(audio16[None, 16_000: 48_000])[0][0],
                               rtol=1e-4, atol=1e-4)
