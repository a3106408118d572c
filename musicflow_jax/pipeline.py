"""The MusicFlow cascade as a Python API (the CLI in generate.py is a thin layer over it).

    mf = MusicFlow.load()                       # the bundled model (musicflow_jax/assets/bundled)
    g = mf.generate(["a Bach chorale played on a church organ"], duration=10.0, seed=0)
    g.audio  # (B, S) float32 at g.sample_rate

text -> frozen T5 -> stage 1 flow (semantic, 50 Hz) -> upsample to 75 Hz -> stage 2 flow (acoustic latents) ->
feature backend decoder -> audio. `continue_`, `infill` and `restyle` encode a prompt clip with the backend's
encoders and hold it as in-context frames (bit-exact in latent space); durations beyond a stage's trained window
use windowed continuation with overlap + crossfade (longform.py).

A model folder holds `stage1.safetensors`, `stage2.safetensors` (stage_io.py format), `features.json` (feature
backend: "mel" or "encodec" + the normalisation stats of both streams) and `text_encoder/` (the exact T5 stage 1
was trained with; stage 2 shares it unless its config names another T5, which is then rebuilt from that config).
Every user-facing problem raises `GenerateError` with a one-line message and fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from musicflow_jax import features, longform
from musicflow_jax.config import Config, ConfigError, TextConfig

BUNDLED = Path(__file__).resolve().parent / "assets" / "bundled"
MAX_DURATION = 600.0  # seconds; long-form beyond this is refused (memory/time on CPU)
SEMANTIC_RATE, ACOUSTIC_RATE = 50.0, 75.0
AUDIO_FADE_S = 0.02  # crossfade where generated audio meets kept prompt audio


class GenerateError(ValueError):
    """A bad input or model file; the message is one line naming the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class StageSettings:
    steps: int = 16
    solver: str = "midpoint"
    cfg_scale: float = 3.0

    @classmethod
    def from_config(cls, cfg: Config) -> StageSettings:
        """The stage's own defaults (cfg.sample)."""
        return cls(steps=cfg.sample.steps, solver=cfg.sample.solver, cfg_scale=cfg.sample.cfg_scale)


@dataclasses.dataclass
class Generation:
    audio: np.ndarray  # (B, S) float32 at sample_rate
    sample_rate: int
    semantic: np.ndarray  # (B, T_s, C) normalised stage-1 stream (model space)
    acoustic: np.ndarray  # (B, T_a, D) normalised stage-2 stream (model space)
    texts: list[str]
    seed: int
    mode: str
    nfe: dict[str, int]
    seconds: float  # wall time
    prompt_semantic: np.ndarray | None = None  # (T_s, C) encoded prompt, model space
    prompt_acoustic: np.ndarray | None = None  # (T_a, D)

    def metadata(self, i: int) -> dict[str, Any]:
        return {"text": self.texts[i], "seed": self.seed, "mode": self.mode, "nfe": self.nfe,
                "duration": round(self.audio.shape[-1] / self.sample_rate, 4)}


# ----------------------------------------------------------------------------------------- input checks


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise GenerateError("no text given: pass --text 'a description of the music' (or a --prompts-file)")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise GenerateError(f"text {i + 1} is empty: describe the music, e.g. --text 'a calm piano piece in C "
                                "major'")
    return [t.strip() for t in texts]


def check_duration(duration: float, name: str = "--duration") -> float:
    try:
        d = float(duration)
    except (TypeError, ValueError):
        raise GenerateError(f"{name} {duration!r} is not a number: give seconds, e.g. {name} 10") from None
    if not math.isfinite(d) or d <= 0:
        raise GenerateError(f"{name} {duration} must be a positive number of seconds, e.g. {name} 10")
    if d < 1.0 / SEMANTIC_RATE * 2:
        raise GenerateError(f"{name} {d} s is shorter than two semantic frames (0.04 s): ask for more")
    if d > MAX_DURATION:
        raise GenerateError(f"{name} {d} s is too long: at most {MAX_DURATION:.0f} s (generate parts and join them)")
    return d


def parse_regions(spec: str | Sequence[tuple[float, float]], audio_seconds: float) -> list[tuple[float, float]]:
    """'3.0-5.5,8-9' (seconds) -> sorted [(3.0, 5.5), (8.0, 9.0)]; checks order, bounds and overlaps."""
    if isinstance(spec, str):
        if not spec.strip():
            raise GenerateError("--regions is empty: give START-END seconds, e.g. --regions 3.0-5.5,8-9")
        out = []
        for part in spec.split(","):
            bits = part.strip().split("-")
            try:
                if len(bits) != 2:
                    raise ValueError
                out.append((float(bits[0]), float(bits[1])))
            except ValueError:
                raise GenerateError(f"--regions: cannot read {part.strip()!r}; use START-END in seconds, e.g. "
                                    "--regions 3.0-5.5,8-9") from None
    else:
        out = [(float(a), float(b)) for a, b in spec]
    if not out:
        raise GenerateError("no infill regions given: pass --regions START-END[,START-END...] in seconds")
    for a, b in out:
        if not (math.isfinite(a) and math.isfinite(b)) or a >= b:
            raise GenerateError(f"--regions {a:g}-{b:g}: start must be before end (seconds, e.g. 3.0-5.5)")
        if a < 0 or b > audio_seconds + 1e-6:
            raise GenerateError(f"--regions {a:g}-{b:g} is outside the prompt audio (0-{audio_seconds:.2f} s): keep "
                                "regions inside it")
    out.sort()
    for (a0, b0), (a1, b1) in zip(out, out[1:]):
        if a1 < b0:
            raise GenerateError(f"--regions {a0:g}-{b0:g} and {a1:g}-{b1:g} overlap: merge them into one region")
    return out


def check_settings(s: StageSettings, stage: str) -> StageSettings:
    from musicflow_jax.sampling import SOLVERS

    if s.solver not in SOLVERS:
        raise GenerateError(f"{stage}: unknown solver {s.solver!r}; choose one of {', '.join(SOLVERS)}")
    if not isinstance(s.steps, int) or s.steps < 1 or s.steps > 1000:
        raise GenerateError(f"{stage}: --steps {s.steps} must be an integer in 1..1000")
    if not math.isfinite(s.cfg_scale) or s.cfg_scale < 0 or s.cfg_scale > 50:
        raise GenerateError(f"{stage}: --cfg {s.cfg_scale} must be in 0..50 (1 = no guidance)")
    return s


# ----------------------------------------------------------------------------------------- feature backends


class Backend:
    """Encoders/decoder of the two streams + their normalisation stats (from the training data index)."""

    def __init__(self, kind: str, codec: Any, semantic: Any, stats: dict[str, Any], semantic_to_vectors: Any = None):
        self.kind, self.codec, self.semantic = kind, codec, semantic
        self.sem_mean, self.sem_std = (np.asarray(stats["semantic"][k], np.float32) for k in ("mean", "std"))
        self.ac_mean, self.ac_std = (np.asarray(stats["acoustic"][k], np.float32) for k in ("mean", "std"))
        self._to_vectors = semantic_to_vectors

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def hop(self) -> int:
        return int(self.codec.hop_length)

    @property
    def semantic_dim(self) -> int:
        return int(self.sem_mean.shape[0])

    @property
    def acoustic_dim(self) -> int:
        return int(self.codec.latent_dim)

    def encode(self, audio_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mono audio at sample_rate -> (semantic (T_s, C), acoustic (T_a, D)), both normalised (model space)."""
        return self.encode_semantic(audio_s), self.encode_acoustic(audio_s)

    def encode_semantic(self, audio_s: np.ndarray) -> np.ndarray:
        """Mono audio at sample_rate -> normalised semantic features (T_s, C)."""
        from musicflow_jax.audio import resample

        a_sem = resample(audio_s, self.sample_rate, int(self.semantic.sample_rate))
        h = np.asarray(self.semantic.features(a_sem[None]))
        if self._to_vectors is not None:
            h = np.asarray(self._to_vectors(h))
        return features.normalize(h[0], self.sem_mean, self.sem_std)

    def encode_acoustic(self, audio_s: np.ndarray) -> np.ndarray:
        """Mono audio at sample_rate -> normalised acoustic latents (T_a, D)."""
        z = np.asarray(self.codec.encode_latents(audio_s[None]))
        return features.normalize(z[0], self.ac_mean, self.ac_std)

    def decode(self, ac_btd: np.ndarray) -> np.ndarray:
        z = features.denormalize(np.asarray(ac_btd, np.float32), self.ac_mean, self.ac_std)
        return np.asarray(self.codec.decode_latents(jnp.asarray(z, jnp.float32)), np.float32)


def load_backend(folder: Path) -> Backend:
    spec_file = folder / "features.json"
    if not spec_file.is_file():
        raise GenerateError(f"model folder {folder} has no features.json: it is not a MusicFlow model folder "
                            "(stage1/stage2 safetensors + features.json + text_encoder/)")
    try:
        spec = json.loads(spec_file.read_text())
        kind = spec.get("backend")
        if kind == "mel":
            from musicflow_jax.backends.mel import ChromaSemantic, MelCodec

            return Backend("mel", MelCodec.from_dict(spec["acoustic"]), ChromaSemantic.from_dict(spec["semantic"]),
                           spec["stats"])
        if kind == "encodec":
            from musicflow_jax.codec import Codec
            from musicflow_jax.semantic import SemanticEncoder

            codec = Codec.load(folder / spec.get("encodec", "encodec"))
            kmeans = spec.get("kmeans")
            enc = SemanticEncoder.load(folder / spec.get("hubert", "hubert"), (folder / kmeans) if kmeans else None,
                                       int(spec["layer"]))
            to_vec = (lambda h: enc.unit_vectors(enc.units(h))) if kmeans else None
            return Backend("encodec", codec, enc, spec["stats"], to_vec)
    except (KeyError, TypeError, ValueError) as e:  # bad JSON, missing keys, bad fields, unusable encoder files
        msg = str(e).replace("\n", " ")
        raise GenerateError(f"{spec_file}: cannot build the feature backend ({type(e).__name__}: {msg}); rewrite the "
                            "folder with tools/assemble_model.py") from None
    raise GenerateError(f"{spec_file}: unknown feature backend {kind!r}; expected 'mel' or 'encodec'")


# ----------------------------------------------------------------------------------------- the cascade


def _stage_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.safetensors"


class MusicFlow:
    """Two flow stages + text encoder + feature backend. Use `MusicFlow.load(...)`."""

    def __init__(self, cfg1: Config, model1: Any, cfg2: Config, model2: Any, text1: Any, text2: Any,
                 backend: Backend, folder: Path):
        self.cfg1, self.model1, self.cfg2, self.model2 = cfg1, model1, cfg2, model2
        self.text1, self.text2, self.backend, self.folder = text1, text2, backend, folder

    # --------------------------------------------------------------------- loading
    @classmethod
    def load(cls, checkpoint: str | Path | None = None, *, stage1: str | Path | None = None,
             stage2: str | Path | None = None) -> MusicFlow:
        """Load a model folder (default: the bundled model); stage1/stage2 replace its exported stages."""
        from musicflow_jax.convert.io import ConversionError
        from musicflow_jax.stage_io import StageError, load_stage

        folder = Path(checkpoint) if checkpoint else BUNDLED
        if not folder.is_dir():
            if folder.suffix == ".safetensors":
                raise GenerateError(f"--checkpoint {folder} is a single stage file: pass it as --stage1-checkpoint or "
                                    "--stage2-checkpoint (--checkpoint takes a model folder)")
            raise GenerateError(f"--checkpoint {folder} is not a folder: pass a MusicFlow model folder "
                                "(stage1/stage2 .safetensors + features.json + text_encoder/)")
        try:
            backend = load_backend(folder)
            cfg1, model1 = load_stage(Path(stage1) if stage1 else _stage_file(folder, "stage1"), "semantic")
            cfg2, model2 = load_stage(Path(stage2) if stage2 else _stage_file(folder, "stage2"), "acoustic")
            _check_compatible(cfg1, cfg2, backend)
            same_t5 = _text_encoder_id(cfg1) == _text_encoder_id(cfg2)
            text1 = _load_text(folder, cfg1, shipped=True)
            text2 = text1 if same_t5 and cfg2.text == cfg1.text else _load_text(folder, cfg2, shipped=same_t5)
        except (StageError, ConversionError, ConfigError, FileNotFoundError) as e:
            raise GenerateError(str(e).replace("\n", " ")) from None
        return cls(cfg1, model1, cfg2, model2, text1, text2, backend, folder)

    @property
    def sample_rate(self) -> int:
        return self.backend.sample_rate

    # --------------------------------------------------------------------- public modes
    def generate(self, texts: Sequence[str], duration: float = 10.0, *, seed: int = 0,
                 stage1: StageSettings | None = None, stage2: StageSettings | None = None,
                 overlap: float = 0.5, progress: bool = True) -> Generation:
        """Text-to-music: `duration` seconds per text, batched."""
        texts, duration = check_texts(texts), check_duration(duration)
        n_s, n_a = frames_for(duration, SEMANTIC_RATE), frames_for(duration, ACOUSTIC_RATE)
        b = len(texts)
        sem_ctx, sem_gen = np.zeros((b, n_s, self.backend.semantic_dim), np.float32), np.ones(n_s, bool)
        ac_ctx, ac_gen = np.zeros((b, n_a, self.backend.acoustic_dim), np.float32), np.ones(n_a, bool)
        return self._run("generate", texts, duration, seed, stage1, stage2, overlap, progress,
                         sem_ctx, sem_gen, ac_ctx, ac_gen, run_stage1=True)

    def continue_(self, texts: Sequence[str], prompt: str | Path | np.ndarray, duration: float, *, seed: int = 0,
                  stage1: StageSettings | None = None, stage2: StageSettings | None = None, overlap: float = 0.5,
                  progress: bool = True) -> Generation:
        """Continuation: the prompt audio is kept as context and `duration` seconds in total are returned."""
        texts, duration = check_texts(texts), check_duration(duration)
        audio = self.read_prompt(prompt)
        p = len(audio) / self.sample_rate
        if duration <= p + 1.0 / SEMANTIC_RATE:
            raise GenerateError(f"--duration {duration:g} s must exceed the prompt's length ({p:.2f} s) for "
                                "--mode continue: it is the total length of the result")
        return self._in_context("continue", texts, audio, duration, [(p, duration)], seed, stage1, stage2,
                                overlap, progress)

    def infill(self, texts: Sequence[str], prompt: str | Path | np.ndarray,
               regions: str | Sequence[tuple[float, float]], *, seed: int = 0,
               stage1: StageSettings | None = None, stage2: StageSettings | None = None, overlap: float = 0.5,
               progress: bool = True) -> Generation:
        """Infilling: regenerate `regions` (seconds) of the prompt; everything else is kept."""
        texts = check_texts(texts)
        audio = self.read_prompt(prompt)
        p = len(audio) / self.sample_rate
        regs = parse_regions(regions, p)
        return self._in_context("infill", texts, audio, check_duration(p, "prompt length"), regs, seed, stage1,
                                stage2, overlap, progress)

    def restyle(self, texts: Sequence[str], prompt: str | Path | np.ndarray, *, seed: int = 0,
                stage2: StageSettings | None = None, overlap: float = 0.5, progress: bool = True) -> Generation:
        """Semantic-stage editing: keep the prompt's semantic features, re-run stage 2 with new text."""
        texts = check_texts(texts)
        audio = self.read_prompt(prompt)
        duration = check_duration(len(audio) / self.sample_rate, "prompt length")
        sem_p = self.backend.encode_semantic(audio)
        n_s, n_a = frames_for(duration, SEMANTIC_RATE), frames_for(duration, ACOUSTIC_RATE)
        b = len(texts)
        sem_ctx = np.broadcast_to(_fit(sem_p, n_s), (b, n_s, sem_p.shape[-1])).copy()
        ac_ctx = np.zeros((b, n_a, self.backend.acoustic_dim), np.float32)
        g = self._run("restyle", texts, duration, seed, None, stage2, overlap, progress, sem_ctx,
                      np.zeros(n_s, bool), ac_ctx, np.ones(n_a, bool), run_stage1=False)
        g.prompt_semantic = sem_p
        return g

    def read_prompt(self, prompt: str | Path | np.ndarray) -> np.ndarray:
        """Mono float32 prompt at the backend sample rate (file path or array already at that rate)."""
        if isinstance(prompt, np.ndarray):
            audio = np.asarray(prompt, np.float32).reshape(-1)
        else:
            from musicflow_jax.audio import read_audio

            path = Path(prompt)
            if not path.is_file():
                raise GenerateError(f"--prompt-audio {path} does not exist: give a readable audio file (WAV, FLAC, "
                                    "OGG)")
            try:
                audio, _ = read_audio(path, sample_rate=self.sample_rate, mono=True)
            except Exception as e:  # noqa: BLE001 - soundfile/libsndfile raise several types on bad files
                raise GenerateError(f"--prompt-audio {path} cannot be read as audio ({type(e).__name__}): convert "
                                    "it to WAV/FLAC") from None
        if audio.size < 2 * self.backend.hop or not np.isfinite(audio).all():
            raise GenerateError(f"--prompt-audio is empty, too short (< {2 * self.backend.hop} samples = "
                                f"{2 * self.backend.hop / self.sample_rate:.3f} s) or holds NaN/inf: give a real "
                                "recording of at least 0.1 s")
        return audio

    # --------------------------------------------------------------------- internals
    def _in_context(self, mode: str, texts: list[str], audio: np.ndarray, duration: float,
                    regions: list[tuple[float, float]], seed: int, stage1: StageSettings | None,
                    stage2: StageSettings | None, overlap: float, progress: bool) -> Generation:
        sem_p, ac_p = self.backend.encode(audio)
        n_s, n_a = frames_for(duration, SEMANTIC_RATE), frames_for(duration, ACOUSTIC_RATE)
        sem_gen, ac_gen = region_mask(regions, n_s, SEMANTIC_RATE), region_mask(regions, n_a, ACOUSTIC_RATE)
        p = len(audio) / self.sample_rate
        # frames the prompt does not cover (continue: also its last, partly zero-padded frame)
        cont = mode == "continue"
        sem_gen |= np.arange(n_s) >= (features.frames_at(p, SEMANTIC_RATE) if cont else len(sem_p))
        ac_gen |= np.arange(n_a) >= (features.frames_at(p, ACOUSTIC_RATE) if cont else len(ac_p))
        b = len(texts)
        sem_ctx = np.broadcast_to(_fit(sem_p, n_s), (b, n_s, sem_p.shape[-1])).copy()
        ac_ctx = np.broadcast_to(_fit(ac_p, n_a), (b, n_a, ac_p.shape[-1])).copy()
        g = self._run(mode, texts, duration, seed, stage1, stage2, overlap, progress, sem_ctx, sem_gen, ac_ctx,
                      ac_gen, run_stage1=True)
        n_samples = g.audio.shape[-1]
        keep = np.zeros(n_samples, bool)
        keep[: min(len(audio), n_samples)] = True
        keep &= ~region_mask(regions, n_samples, float(self.sample_rate))
        prompt_full = np.zeros(n_samples, np.float32)
        prompt_full[: min(len(audio), n_samples)] = audio[:n_samples]
        fade = int(round(AUDIO_FADE_S * self.sample_rate))
        g.audio = longform.audio_crossfade(prompt_full[None], g.audio, keep, fade)
        g.prompt_semantic, g.prompt_acoustic = sem_p, ac_p
        return g

    def _run(self, mode: str, texts: list[str], duration: float, seed: int, s1: StageSettings | None,
             s2: StageSettings | None, overlap: float, progress: bool, sem_ctx: np.ndarray, sem_gen: np.ndarray,
             ac_ctx: np.ndarray, ac_gen: np.ndarray, *, run_stage1: bool) -> Generation:
        from tqdm import tqdm

        if not 0.0 <= overlap < 1.0:
            raise GenerateError(f"--overlap {overlap} must be a fraction of the window in [0, 1)")
        s1 = check_settings(s1 or StageSettings.from_config(self.cfg1), "stage 1")
        s2 = check_settings(s2 or StageSettings.from_config(self.cfg2), "stage 2")
        t0 = time.perf_counter()
        key = jax.random.key(int(seed))
        n1 = self._windows(self.cfg1, sem_gen.shape[0], overlap) if run_stage1 else 0
        n2 = self._windows(self.cfg2, ac_gen.shape[0], overlap)
        nfe = {"stage1": 0, "stage2": 0}
        with tqdm(total=n1 + n2 + 1, desc=f"{mode} {duration:g}s x{len(texts)}", disable=not progress,
                  leave=False) as bar:
            text1 = None
            if run_stage1 and sem_gen.any():
                text1 = self.text1(texts)
                sem = self._windowed("stage1", text1, s1, jax.random.fold_in(key, 1), sem_ctx, sem_gen, None,
                                     overlap, nfe, bar.update)
            else:
                sem = sem_ctx.astype(np.float32)
                bar.update(n1)
            text2 = text1 if text1 is not None and self.text2 is self.text1 else self.text2(texts)  # encode once
            cond = sem[:, features.upsample_index(ac_gen.shape[0], sem.shape[1], SEMANTIC_RATE, ACOUSTIC_RATE)]
            ac = self._windowed("stage2", text2, s2, jax.random.fold_in(key, 2), ac_ctx, ac_gen, cond, overlap, nfe,
                                bar.update)
            audio = self.backend.decode(ac)[:, : int(round(duration * self.sample_rate))]
            if mode in ("generate", "restyle"):  # keep clear of clipping (prompt modes keep the prompt's level)
                peak = np.abs(audio).max(axis=-1, keepdims=True)
                audio = np.where(peak > 0.95, audio * (0.95 / np.maximum(peak, 1e-9)), audio).astype(np.float32)
            bar.update(1)
        return Generation(audio=audio, sample_rate=self.sample_rate, semantic=sem, acoustic=ac, texts=list(texts),
                          seed=int(seed), mode=mode, nfe=nfe, seconds=time.perf_counter() - t0)

    @staticmethod
    def _windows(cfg: Config, frames: int, overlap: float) -> int:
        return len(longform.plan_windows(frames, cfg.data.frames, int(overlap * cfg.data.frames)))

    def _windowed(self, name: str, text: tuple[jax.Array, np.ndarray], s: StageSettings, key: jax.Array,
                  ctx: np.ndarray, gen: np.ndarray, cond: np.ndarray | None, overlap: float, nfe: dict[str, int],
                  progress: Callable[[int], None]) -> np.ndarray:
        """Stage `name` over the whole sequence, window by window (longform.generate_windowed); `text` is the
        (embeddings, mask) of the stage's text encoder."""
        model, cfg = (self.model1, self.cfg1) if name == "stage1" else (self.model2, self.cfg2)
        emb, mask = text
        window, ov = cfg.data.frames, int(overlap * cfg.data.frames)
        return longform.generate_windowed(self._sampler(model, cfg, emb, mask, s, nfe, name), key, ctx,
                                          np.broadcast_to(gen, ctx.shape[:2]), cond, window=window, overlap=ov,
                                          crossfade=max(1, ov // 4), progress=progress)

    def _sampler(self, model: Any, cfg: Config, emb: jax.Array, mask: np.ndarray, s: StageSettings,
                 nfe: dict[str, int], name: str) -> longform.WindowSampler:
        from musicflow_jax.sampling import sample

        def run(key: jax.Array, ctx: np.ndarray, gen: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
            x, n = sample(model, key, text_emb=emb, text_mask=jnp.asarray(mask), ctx=jnp.asarray(ctx),
                          gen_mask=jnp.asarray(gen), cond=None if cond is None else jnp.asarray(cond),
                          solver=s.solver, steps=s.steps, cfg_scale=s.cfg_scale, sigma_min=cfg.flow.sigma_min,
                          rtol=cfg.sample.rtol, atol=cfg.sample.atol)
            nfe[name] += int(n)
            return np.asarray(x)

        return run


def frames_for(duration: float, rate: float) -> int:
    """Frames needed to cover `duration` seconds at `rate` Hz (the audio is trimmed to the exact length)."""
    return int(math.ceil(duration * rate - 1e-6))


def _fit(x_tc: np.ndarray, n: int) -> np.ndarray:
    """First n frames of x, zero-padded (frames beyond the prompt are generated anyway)."""
    return features.pad_or_crop(x_tc.astype(np.float32), n)[0]


def region_mask(regions: Sequence[tuple[float, float]], n: int, rate: float) -> np.ndarray:
    """(n,) bool: frames (or samples) at `rate` that overlap any [start, end) region in seconds."""
    m = np.zeros(n, bool)
    for a, b in regions:
        lo, hi = int(math.floor(a * rate + 1e-6)), int(math.ceil(b * rate - 1e-6))
        m[max(lo, 0): max(min(hi, n), 0)] = True
    return m


def _text_encoder_id(cfg: Config) -> tuple[str, int, int | None]:
    """What fixes a stage's T5 weights: its converted checkpoint, or the embedded T5's dim and seed (train.seed)."""
    return cfg.text.checkpoint, cfg.text.dim, None if cfg.text.checkpoint else cfg.train.seed


def _load_text(folder: Path, cfg: Config, shipped: bool) -> Any:
    """The T5 `cfg`'s stage was trained with. The folder's `text_encoder/` is stage 1's (tools/assemble_model.py):
    used when `shipped` (this stage has the same T5 as stage 1), otherwise rebuilt from cfg.text / cfg.train.seed."""
    from musicflow_jax.text_encoder import TextEncoder

    bundled = folder / "text_encoder"
    if shipped and bundled.is_dir():
        return TextEncoder.load(TextConfig(checkpoint=str(bundled), max_len=cfg.text.max_len, dim=cfg.text.dim))
    return TextEncoder.load(cfg.text, cfg.train.seed)


def _check_compatible(cfg1: Config, cfg2: Config, backend: Backend) -> None:
    if cfg2.model.cond_dim != cfg1.model.feature_dim:
        raise GenerateError(f"mismatched stages: stage 2 expects {cfg2.model.cond_dim}-d semantic features but stage 1 "
                            f"makes {cfg1.model.feature_dim}-d ones; use the two stages trained together")
    if cfg1.model.feature_dim != backend.semantic_dim:
        raise GenerateError(f"mismatched config: stage 1 makes {cfg1.model.feature_dim}-d features but the model "
                            f"folder's {backend.kind} backend has {backend.semantic_dim}-d semantic features")
    if cfg2.model.feature_dim != backend.acoustic_dim:
        raise GenerateError(f"mismatched config: stage 2 makes {cfg2.model.feature_dim}-d latents but the model "
                            f"folder's {backend.kind} backend decodes {backend.acoustic_dim}-d ones")
    for c in (cfg1, cfg2):
        if (c.data.semantic_rate, c.data.acoustic_rate) != (SEMANTIC_RATE, ACOUSTIC_RATE):
            raise GenerateError(f"config {c.name}: frame rates {c.data.semantic_rate}/{c.data.acoustic_rate} Hz are "
                                f"not the supported {SEMANTIC_RATE:g}/{ACOUSTIC_RATE:g} Hz")
