"""The codec trainer (musicflow_jax/training/codec_trainer.py, cli/train_codec.py) on synthetic harmonic tones:
training lowers the reconstruction loss, resume == uninterrupted, the exported folder loads as a Codec and as the
"encodec" acoustic part, and bad input is one error line with exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from musicflow_jax.core import config_io
from musicflow_jax.core.audio import write_wav
from musicflow_jax.data.pairs import save_pairs
from musicflow_jax.errors import RunUnfinishedError
from musicflow_jax.training import codec_trainer as ct
from musicflow_jax.training import loop
from musicflow_jax.training.codec_config import CodecTrainConfig
from musicflow_jax.training.logger import read_jsonl

SR, STEPS = 24_000, 30


def _tone(f0_hz: float, seconds: float, seed: int) -> np.ndarray:
    """A harmonic tone with a few notes (f0, a fifth, an octave) and a decaying envelope per note."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t_s = np.arange(n) / SR
    x_s = np.zeros(n, np.float32)
    note = n // 4
    for k, ratio in enumerate((1.0, 1.5, 2.0, 1.25)):
        seg = slice(k * note, (k + 1) * note)
        tt = t_s[seg] - t_s[seg][0]
        f = f0_hz * ratio
        wave = sum(np.sin(2 * math.pi * f * h * tt + rng.uniform(0, 6.28)) / h for h in (1, 2, 3, 4))
        x_s[seg] = 0.3 * np.exp(-3.0 * tt) * wave
    return x_s


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("codec_tones")
    lines = []
    for i, f0 in enumerate((196.0, 220.0, 261.6, 329.6, 293.7)):
        write_wav(root / f"tone{i}.wav", _tone(f0, 1.0, i), SR)
        lines.append({"path": f"tone{i}.wav", "caption": f"tone {i}", "split": "valid" if i == 4 else "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "manifest.jsonl"


def tiny_config(manifest: Path, **train: int) -> CodecTrainConfig:
    return config_io.apply_overrides(CodecTrainConfig(), [
        f"data.manifest={manifest}", "data.segment_seconds=0.1", "data.batch_size=4",
        "model.num_filters=4", "model.hidden_size=16", "model.num_lstm_layers=0",
        "loss.stft_sizes=(256, 512)", "loss.mel_scales=((512, 32), (128, 8))", "loss.latent_noise=0.3",
        "loss.w_smooth=0.5",
        "optim.lr=3e-3", "optim.warmup_steps=3", "optim.schedule=constant", "optim.ema_decay=0.9",
        f"train.steps={STEPS}", "train.log_every=1", "train.eval_every=15", "train.eval_batches=2",
        "train.ckpt_every=15", *[f"train.{k}={v}" for k, v in train.items()]])


@pytest.fixture(scope="module")
def full_run(manifest, tmp_path_factory) -> tuple[CodecTrainConfig, Path, ct.TrainState]:
    cfg = tiny_config(manifest)
    workdir = tmp_path_factory.mktemp("codec_full")
    return cfg, workdir, ct.train_codec(cfg, workdir, async_ckpt=False)


@pytest.mark.slow  # shares one ~60-100 s compile of the tiny codec's train step (2-core CPU)
def test_training_lowers_the_reconstruction_loss(full_run):
    cfg, workdir, _ = full_run
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
    # measured: 7.19 -> 3.88 over 30 steps (loss 0.54 of its start); the margin leaves room for platform noise
    assert last < 0.75 * first, (first, last)
    valid = read_jsonl(workdir / "metrics.jsonl", "valid")
    assert [r["step"] for r in valid] == [0, 15, 30]
    assert valid[-1]["loss"] < 0.8 * valid[0]["loss"], valid
    assert {"sc_512", "logmag_256", "stft", "mel", "wave", "smooth", "seconds_per_step"} <= set(rows[-1])


@pytest.mark.slow  # shares one ~60-100 s compile of the tiny codec's train step (2-core CPU)
def test_resume_equals_uninterrupted(full_run, manifest, tmp_path):
    cfg, workdir, full_state = full_run
    stopped = ct.train_codec(cfg, tmp_path, stop_at=STEPS // 2, async_ckpt=False)
    with pytest.raises(RunUnfinishedError, match=f"stopped after step {STEPS // 2} of {STEPS}: rerun the same command"):
        loop.require_finished(stopped, cfg.train.steps, tmp_path)  # what a caller building on the run checks
    resumed = ct.train_codec(cfg, tmp_path, async_ckpt=False)
    loop.require_finished(resumed, cfg.train.steps, tmp_path)
    a, b = read_jsonl(workdir / "metrics.jsonl"), read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-6)
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full_state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(resumed.step) == STEPS


@pytest.mark.slow  # shares one ~60-100 s compile of the tiny codec's train step (2-core CPU)
def test_export_loads_as_codec_and_acoustic_part(full_run, tmp_path):
    from safetensors.numpy import load_file

    from musicflow_jax.backends import build_part
    from musicflow_jax.encoders.codec import Codec

    cfg, workdir, state = full_run
    out = ct.export_codec(workdir, tmp_path / "codec")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    part = build_part("acoustic", {"kind": "encodec", "folder": str(out)})
    codec = part.codec
    assert isinstance(codec, Codec)
    assert (codec.sample_rate, codec.frame_rate, codec.latent_dim) == (SR, 75, 16)
    x_bs = np.random.default_rng(0).normal(size=(2, 5000)).astype(np.float32) * 0.1
    z_btd = codec.encode_latents(x_bs)
    assert z_btd.shape == (2, math.ceil(5000 / 320), 16)
    model = ct.trained_model(cfg, state)
    want = np.asarray(model.decode_latents(z_btd))[..., 0]
    np.testing.assert_allclose(np.asarray(codec.decode_latents(z_btd)), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(z_btd), np.asarray(model.encode_latents(x_bs[..., None])), atol=1e-5)
    assert (part.frame_rate, part.dim) == (75.0, 16)
    z = part.encode(x_bs)
    assert z.shape == (2, 16, 16) and part.decode(z).shape == (2, 16 * 320)
    before = load_file(str(out / "model.safetensors"))
    ct.export_codec(state, out, cfg=cfg)  # over an existing folder, from the live state: the same weights
    after = load_file(str(out / "model.safetensors"))
    assert sorted(before) == sorted(after) and all(np.array_equal(before[k], after[k]) for k in before)
    assert any(k.endswith("conv.weight_g") for k in after)  # weight-norm parametrisation dumped as trained


def test_latent_roughness_closed_forms():
    """1 - lag-1 autocorrelation: 0 for latents constant in time, ~1 for white noise, 1 - cos(w) for a sinusoid of
    w radians per frame; the reconstruction losses are 0 for a perfect reconstruction."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    const = jnp.broadcast_to(jnp.asarray(rng.normal(size=(2, 1, 8)), jnp.float32), (2, 50, 8))
    assert float(ct.latent_roughness(const)) == pytest.approx(0.0, abs=1e-6)
    white = jnp.asarray(rng.normal(size=(4, 2000, 8)), jnp.float32)
    assert float(ct.latent_roughness(white)) == pytest.approx(1.0, abs=0.03)
    w = 0.3
    sine = jnp.asarray(np.sin(w * np.arange(4000))[None, :, None] * np.ones((1, 1, 3)), jnp.float32)
    assert float(ct.latent_roughness(sine)) == pytest.approx(1 - np.cos(w), rel=0.01)
    cfg = config_io.apply_overrides(CodecTrainConfig(), ["loss.mel_scales=((512, 32), (64, 5))"])
    x = jnp.asarray(rng.normal(size=(2, 4800)) * 0.1, jnp.float32)
    total, parts = ct.reconstruction_losses(x, x, cfg, ct._mel_banks(cfg))
    assert float(total) == pytest.approx(0.0, abs=1e-5) and set(parts) >= {"mel", "stft", "wave"}


def _bursts(onsets_s: tuple[float, ...], seconds: float, f0_hz: float = 220.0) -> np.ndarray:
    """Harmonic notes starting abruptly at `onsets_s`, each held at a constant level until the next."""
    t_s = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t_s)
    for k, (start, end) in enumerate(zip(onsets_s, (*onsets_s[1:], seconds))):
        on = (t_s >= start) & (t_s < end)
        f = f0_hz * (1.0, 1.25, 1.5, 2.0)[k % 4]
        x[on] = 0.2 * sum(np.sin(2 * math.pi * f * h * (t_s[on] - start)) / h for h in (1, 2, 3))
    return x.astype(np.float32)


def test_band_rises_peak_at_note_onsets_and_the_flux_term_adds_its_weight():
    """The onset-flux term's per-band rises, summed over bands, have exactly one peak per note, each within 50 ms
    (mir_eval's onset window) of the note's start; a held note adds none. The term is 0 for a perfect
    reconstruction, > 0 when the reconstruction misses one of the target's onsets, and the total is the
    w_flux = 0 total plus w_flux times it."""
    import jax.numpy as jnp
    from scipy.signal import find_peaks

    onsets = (0.25, 0.6, 1.0, 1.3)
    x_s = _bursts(onsets, 1.8)
    env = np.asarray(ct.band_rises(jnp.asarray(x_s[None]), SR))[0].sum(axis=1)
    t_s = (np.arange(env.size) + ct.FLUX_LAG) / ct.FLUX_RATE  # rise i ends at frame i + lag
    env = env[t_s < 1.8 - 0.1]  # the reflect padding's seam at the end of the held note is not an onset
    peaks, _ = find_peaks(env, height=0.25 * env.max(), distance=10)
    assert len(peaks) == len(onsets), t_s[peaks]
    assert np.abs(t_s[peaks] - np.asarray(onsets)).max() <= 0.05, t_s[peaks]
    # a reconstruction holding the second note through the third's start misses that onset
    y_s = _bursts((0.25, 0.6, 1.3), 1.8)
    base = config_io.apply_overrides(CodecTrainConfig(), ["loss.mel_scales=((512, 32),)"])
    flux = config_io.apply_overrides(base, ["loss.w_flux=3.0"])
    x, y = jnp.asarray(x_s[None]), jnp.asarray(y_s[None])
    t0, p0 = ct.reconstruction_losses(y, x, base, ct._mel_banks(base))
    t1, p1 = ct.reconstruction_losses(y, x, flux, ct._mel_banks(flux))
    assert "flux" not in p0 and float(p1["flux"]) > 0.01
    assert float(t1) == pytest.approx(float(t0) + 3.0 * float(p1["flux"]), rel=1e-5)
    same, parts = ct.reconstruction_losses(x, x, flux, ct._mel_banks(flux))
    assert float(parts["flux"]) == 0.0 and float(same) == pytest.approx(0.0, abs=1e-5)
    # its 2048-point window must fit in a crop: 1,920 samples do for the other terms, not for it
    short = ["loss.stft_sizes=(512,)", "data.segment_seconds=0.08"]
    assert config_io.apply_overrides(CodecTrainConfig(), short).segment_samples == 1920
    with pytest.raises(config_io.ConfigError, match="data.segment_seconds.*loss.w_flux=0"):
        config_io.apply_overrides(CodecTrainConfig(), [*short, "loss.w_flux=1"])


def test_adversarial_terms_closed_forms():
    """The discriminator's hinge loss and the codec's hinge and feature-matching terms on hand-set logits and
    features, and the discriminator's output shapes: time kept, frequency halved by each of the 3 strided convs."""
    import jax.numpy as jnp
    from flax import nnx

    from musicflow_jax.models.discriminator import DiscriminatorConfig, SpectrogramDiscriminator

    rng = np.random.default_rng(0)
    r = [jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32), jnp.asarray(rng.normal(size=(2, 9, 2)), jnp.float32)]
    f = [jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32), jnp.asarray(rng.normal(size=(2, 9, 2)), jnp.float32)]
    feats = [[jnp.asarray(rng.normal(size=(2, 5, 8, 3)), jnp.float32)], [jnp.asarray(rng.normal(size=(2, 9, 4, 3)),
                                                                                    jnp.float32)] * 2]
    real = [(a, fs) for a, fs in zip(r, feats)]
    fake = [(a, [1.5 * x for x in fs]) for a, fs in zip(f, feats)]
    want_d = np.mean([np.mean(np.maximum(1 - np.asarray(a), 0)) + np.mean(np.maximum(1 + np.asarray(b), 0))
                      for a, b in zip(r, f)])
    assert float(ct.hinge_disc_loss(real, fake)) == pytest.approx(want_d, rel=1e-6)
    adv, feat = ct.generator_terms(real, fake)
    assert float(adv) == pytest.approx(np.mean([np.mean(np.maximum(1 - np.asarray(b), 0)) for b in f]), rel=1e-6)
    assert float(feat) == pytest.approx(0.5, rel=1e-5)  # every fake feature map is 1.5x the real one
    sure = [(jnp.full((2, 5, 4), 2.0), feats[0]), (jnp.full((2, 9, 2), 2.0), feats[1])]
    fooled = [(jnp.full((2, 5, 4), -2.0), feats[0]), (jnp.full((2, 9, 2), -2.0), feats[1])]
    assert float(ct.hinge_disc_loss(sure, fooled)) == 0.0  # both margins met
    assert [float(v) for v in ct.generator_terms(sure, fooled)] == [3.0, 0.0]
    disc = SpectrogramDiscriminator(DiscriminatorConfig(scales=2, filters=4), rngs=nnx.Rngs(0))
    out = disc([jnp.zeros((2, 11, 32)), jnp.zeros((2, 23, 16))])
    assert [o[0].shape for o in out] == [(2, 11, 4), (2, 23, 2)]
    assert [[x.shape[2] for x in o[1]] for o in out] == [[32, 16, 8, 4, 4], [16, 8, 4, 2, 2]]
    with pytest.raises(ValueError, match="2 scales and was given 1"):
        disc([jnp.zeros((2, 11, 32))])


@pytest.mark.slow  # compiles the tiny codec's adversarial train step (~60 s on 2 CPU cores)
def test_adversarial_run_warms_up_on_the_plain_codec_and_resumes_exactly(full_run, tmp_path):
    """loss.w_adv / w_feat: during loss.adv_warmup only the discriminator learns, so the codec's weights equal the
    plain run's (same config without the discriminator); after it the adversarial terms move them. A run stopped
    and resumed equals an uninterrupted one (the discriminator's weights and optimizer state are checkpointed), and
    the export holds the codec alone, as the plain run's does."""
    from safetensors.numpy import load_file

    cfg, _, _ = full_run
    adv = config_io.apply_overrides(cfg, ["loss.w_adv=1", "loss.w_feat=2", "loss.adv_warmup=2",
                                          "loss.disc_scales=((512, 16), (256, 8))", "loss.disc_filters=4",
                                          "train.eval_every=0"])
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    ct.train_codec(cfg, tmp_path / "plain", stop_at=2, async_ckpt=False)
    ct.train_codec(cfg, tmp_path / "plain", stop_at=4, async_ckpt=False)
    ct.train_codec(adv, tmp_path / "a", stop_at=2, async_ckpt=False)
    resumed = ct.train_codec(adv, tmp_path / "a", stop_at=4, async_ckpt=False)
    straight = ct.train_codec(adv, tmp_path / "b", stop_at=4, async_ckpt=False)
    _, plain2, _ = ct.load_trained(tmp_path / "plain", 2)
    _, plain4, _ = ct.load_trained(tmp_path / "plain", 4)
    _, adv2, _ = ct.load_trained(tmp_path / "a", 2)
    fresh = ct.CodecTrainer(adv).fresh_state()
    for x, y in zip(leaves(adv2.params["codec"]), leaves(plain2.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert max(np.abs(x - y).max() for x, y in zip(leaves(adv2.params["disc"]), leaves(fresh.params["disc"]))) > 1e-5
    moved = max(np.abs(x - y).max() for x, y in zip(leaves(resumed.params["codec"]), leaves(plain4.params)))
    assert moved > 1e-5, moved
    for x, y in zip(leaves(resumed), leaves(straight), strict=True):
        np.testing.assert_array_equal(x, y)
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"adv", "feat", "disc_loss", "d_real", "d_fake"} <= set(r) for r in rows)
    plain_rows = read_jsonl(tmp_path / "plain" / "metrics.jsonl")
    np.testing.assert_allclose([r["mel"] for r in rows[:2]], [r["mel"] for r in plain_rows[:2]], rtol=1e-5)
    a = load_file(str(ct.export_codec(tmp_path / "a", tmp_path / "a_codec", ema=True) / "model.safetensors"))
    p = load_file(str(ct.export_codec(tmp_path / "plain", tmp_path / "p_codec", ema=True) / "model.safetensors"))
    assert sorted(a) == sorted(p)


@pytest.mark.slow  # compiles the decoder-only train step of the tiny codec (~60 s on 2 CPU cores)
def test_decoder_only_run_starts_from_the_folder_and_keeps_its_latents(full_run, manifest, tmp_path):
    """train.init_from + train.trainable=decoder: the fresh state is the folder's codec, the encoder is not trained
    (its weights and the exported codec's latents are bit-exact the folder's), the decoder is, the loss goes down."""
    from safetensors.numpy import load_file

    from musicflow_jax.encoders.codec import Codec

    cfg, workdir, _ = full_run
    start = ct.export_codec(workdir, tmp_path / "start", ema=True)
    before = Codec.load(start)
    # pairs: the tones' own latents with an error, as a flow would make them, beside the tones
    tones = np.stack([_tone(f0, 20 * 320 / SR, 10 + i) for i, f0 in enumerate((200.0, 310.0, 415.0))])
    z_pairs = np.asarray(before.encode_latents(tones))
    z_pairs = (z_pairs + 0.3 * z_pairs.std() * np.random.default_rng(3).normal(size=z_pairs.shape)).astype(np.float32)
    save_pairs(tmp_path / "pairs.npz", z_pairs, tones, SR, 320)
    steps = 8
    tuned = config_io.apply_overrides(cfg, [f"train.init_from={start}", "train.trainable=decoder",
                                            f"data.pairs={tmp_path / 'pairs.npz'}", "data.pairs_batch=2",
                                            f"train.steps={steps}", "train.eval_every=0", f"train.ckpt_every={steps}"])
    trainer = ct.CodecTrainer(tuned)
    fresh = trainer.fresh_state()
    assert set(fresh.params.keys()) == {"decoder"} and "encoder" in fresh.rest
    # a step's batch: encoded crops + pair crops cut at the same frame from latents and audio, a function of the step
    batch = ct.train_batch(tuned, trainer.clips, 5, trainer.pairs)
    again = ct.train_batch(tuned, trainer.clips, 5, trainer.pairs)
    assert all(np.array_equal(batch[k], again[k]) for k in ("x", "zg", "xg"))
    frames = tuned.segment_samples // 320
    assert batch["zg"].shape == (2, frames, 16) and batch["xg"].shape == (2, frames * 320)
    for zg, xg in zip(batch["zg"], batch["xg"]):
        hits = [(i, o) for i in range(3) for o in range(20 - frames + 1) if np.array_equal(z_pairs[i, o: o + frames],
                                                                                            zg)]
        assert len(hits) == 1 and np.array_equal(tones[hits[0][0], hits[0][1] * 320:][: frames * 320], xg)
    # the pairs' term: stft + mel of the decoded pair crops against their audio (no waveform term), added
    loss_fn = ct.make_loss_fn(tuned, trainer.graphdef)
    with_pairs, parts = loss_fn(fresh.params, fresh.rest, batch["x"], None, batch["zg"], batch["xg"])
    without, _ = loss_fn(fresh.params, fresh.rest, batch["x"])
    y = ct.trained_model(tuned, fresh).decode_latents(batch["zg"])[..., 0]
    _, ref = ct.reconstruction_losses(y, batch["xg"], tuned, ct._mel_banks(tuned))
    assert float(with_pairs - without) == pytest.approx(float(ref["stft"] + ref["mel"]), rel=1e-4)
    assert float(parts["pairs"]) == pytest.approx(float(ref["stft"] + ref["mel"]), rel=1e-4)
    x_bs = np.random.default_rng(1).normal(size=(2, 4000)).astype(np.float32) * 0.1
    z0 = np.asarray(before.encode_latents(x_bs))
    np.testing.assert_allclose(np.asarray(ct.trained_model(tuned, fresh).decode_latents(z0))[..., 0],
                               np.asarray(before.decode_latents(z0)), atol=1e-6, rtol=0)  # eager vs jitted
    state = ct.train_codec(tuned, tmp_path / "run", async_ckpt=False)
    out = ct.export_codec(tmp_path / "run", tmp_path / "tuned")
    w0, w1 = load_file(str(start / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(w0) == sorted(w1)
    enc = [k for k in w0 if k.startswith("encoder.")]
    dec = [k for k in w0 if k.startswith("decoder.")]
    assert enc and dec and all(np.array_equal(w0[k], w1[k]) for k in enc)
    assert all(not np.array_equal(w0[k], w1[k]) for k in dec if k.endswith(("weight_v", "bias")))
    after = Codec.load(out)
    np.testing.assert_array_equal(np.asarray(after.encode_latents(x_bs)), z0)
    assert float(np.max(np.abs(np.asarray(after.decode_latents(z0)) - np.asarray(before.decode_latents(z0))))) > 1e-4
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert int(state.step) == steps and all(r["pairs"] > 0 for r in rows)
    trained, _ = loss_fn(state.params, state.rest, batch["x"], None, batch["zg"], batch["xg"])
    assert float(trained) < 0.95 * float(with_pairs), (float(with_pairs), float(trained))  # step 5's batch


def test_init_from_errors_name_the_key(full_run, tmp_path):
    cfg, workdir, _ = full_run
    with pytest.raises(ct.CodecDataError, match=r"train\.init_from=.*config\.json missing"):
        ct.initial_model(config_io.apply_overrides(cfg, [f"train.init_from={tmp_path / 'nothing'}"]))
    start = ct.export_codec(workdir, tmp_path / "start")
    wider = config_io.apply_overrides(cfg, [f"train.init_from={start}", "model.num_filters=8"])
    with pytest.raises(ct.CodecDataError, match=r"train\.init_from=.* num_filters=4 where the config's model makes 8"):
        ct.initial_model(wider)
    save_pairs(tmp_path / "wide.npz", np.zeros((1, 20, 32), np.float32), np.zeros((1, 20 * 320), np.float32), SR, 320)
    with pytest.raises(ct.CodecDataError, match=r"data\.pairs=.*32-d latents .* do not fit this codec .*16-d"):
        ct.load_pairs(config_io.apply_overrides(cfg, [f"data.pairs={tmp_path / 'wide.npz'}", "data.pairs_batch=2",
                                                      f"train.init_from={start}", "train.trainable=decoder"]))


@pytest.mark.parametrize("override, fragment", [
    ("model.bogus=1", "unknown config key 'model.bogus'"),
    ("model.norm_type=batch", "config key 'model.norm_type'"),
    ("data.segment_seconds=0.01", "config key 'data.segment_seconds'"),
    ("loss.mel_scales=((512,),)", "config key 'loss.mel_scales'"),
    ("loss.w_smooth=-1", "config key 'loss.w_smooth'"),
    ("loss.w_flux=-1", "config key 'loss.w_flux'"),
    ("loss.w_adv=-1", "config key 'loss.w_adv'"),
    ("loss.disc_scales=((512,),)", "config key 'loss.disc_scales'"),
    ("loss.w_adv=1 --set loss.disc_scales=((48000, 64),)", "loss.disc_scales"),
    ("train.trainable=encoder", "config key 'train.trainable'"),
    ("train.trainable=decoder", "set train.init_from"),
    ("data.pairs=x.npz", "data.pairs_batch is 0"),
    ("data.pairs_batch=4", "no data.pairs file is set"),
])
def test_cli_bad_config_is_one_line_exit_2(override, fragment, tmp_path, capsys):
    from musicflow_jax.cli import train_codec

    sets = [a for o in override.split(" --set ") for a in ("--set", o)]
    rc = train_codec.main(["--config", "codec_corpus", "--workdir", str(tmp_path / "w"), *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_cli_missing_manifest_is_one_line_exit_2(tmp_path, capsys):
    from musicflow_jax.cli import train_codec

    rc = train_codec.main(["--config", "codec_corpus", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "data.manifest" in err[0], err


def test_cli_does_not_export_a_run_that_stopped_early(manifest, tmp_path, capsys, monkeypatch):
    """A run its loop stopped (SIGTERM / Ctrl-C: saved step 3 of 10 and returned) is one error line and exit 75, with
    --export or without, nothing exported; a finished run exits 0 and is exported."""
    from types import SimpleNamespace

    from musicflow_jax.cli import train_codec

    exported: list[str] = []
    monkeypatch.setattr(ct, "export_codec", lambda workdir, out, ema: exported.append(out) or out)
    argv = ["--config", "codec_corpus", "--workdir", str(tmp_path / "w"), "--set", f"data.manifest={manifest}",
            "--set", "train.steps=10", "--export", str(tmp_path / "out")]
    monkeypatch.setattr(ct, "train_codec", lambda cfg, workdir: SimpleNamespace(step=np.int32(3)))
    for args in (argv, argv[:-2]):
        assert train_codec.main(args) == 75 and exported == []
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {tmp_path / 'w'} stopped after step 3 of 10: rerun the same command to resume"], err
    monkeypatch.setattr(ct, "train_codec", lambda cfg, workdir: SimpleNamespace(step=np.int32(10)))
    assert train_codec.main(argv) == 0 and exported == [str(tmp_path / "out")]


def test_unreadable_files_are_skipped_and_listed(manifest, tmp_path, capsys):
    """One missing file, one that is not audio and one bad line do not stop codec training: the readable clips load
    (exactly the clean manifest's), the others are listed on stderr (issue 26)."""
    from musicflow_jax.training.codec_trainer import load_clips

    lines = manifest.read_text().splitlines()
    root = manifest.parent
    (root / "notaudio.wav").write_bytes(b"RIFF not really a wave file")
    extra = [json.dumps({"path": "gone.wav", "caption": "x"}), json.dumps({"path": "notaudio.wav", "caption": "y"}),
             "{broken"]
    dirty = root / "dirty.jsonl"
    dirty.write_text("\n".join(lines[:2] + extra + lines[2:]) + "\n")
    got = load_clips(tiny_config(dirty), "train")
    want = load_clips(tiny_config(manifest), "train")
    assert len(got) == len(want) == 4
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)
    err = capsys.readouterr().err
    assert f"skipped {dirty}:5: line is not JSON" in err and f"skipped {dirty}:3: " in err and "gone.wav" in err
    assert f"skipped {dirty}:4: " in err and "3 manifest line(s) skipped in split 'train', 4 clips read" in err
