"""The MusicFlow cascade as a Python API (cli/generate.py and the web app are thin layers over it).

    mf = MusicFlow.load()                       # the bundled model (musicflow_jax/assets/bundled)
    g = mf.generate(["a Bach chorale played on a church organ"], duration=10.0, seed=0)
    g.audio  # (B, S) float32 at g.sample_rate

The cascade is data: `mf.backend` (a FeatureBackend: semantic part + acoustic part + stats) and `mf.stages`, two
`Stage`s run in order - stage 1 generates the semantic stream from text, stage 2 the acoustic stream from text and
stage 1's output upsampled to its frame rate - then the backend's decoder makes audio. `continue_`, `infill` and
`restyle` encode a prompt clip with the backend and hold it as in-context frames (bit-exact in model space);
durations beyond a stage's trained window use windowed continuation with overlap + crossfade (longform.py).
`generate(..., draft=True)` runs both stages at a few steps - the folder's few-step students (`mf.turbo`, its
turbo/ stages) where it has them -; `refine` redoes stage 2 of a draft at full quality keeping its semantic stream.
`MusicFlow.load(turbo=True)` makes the students the cascade. Shorter windows are padded to length buckets with frame
masks (buckets.py), so a new duration reuses compiled executables; `Generation` (generation.py) is the result, with
save / load.

A long-lived server shares one cascade between requests: `MusicFlow.cost` is a request's compute bound before it
runs, and inside `with between_windows(fn):` the cascade calls fn() between windows and stages (the web app's turns
and deadlines: fn may wait, or raise to stop the request).

`MusicFlow.load` reads a model folder (model_folder.py). Every input is checked by checks.py; every user-facing
problem raises `GenerateError`: one line naming the API parameter (`e.param`; the CLI names its flag instead) and
the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from musicflow_jax.backends import FeatureBackend
from musicflow_jax.core import beat, frames
from musicflow_jax.core import config as config_lib
from musicflow_jax.core.audio import AudioError, audio_info, read_audio
from musicflow_jax.core.config import Config, ConfigError
from musicflow_jax.core.sampling import expected_nfe, max_nfe, sample
from musicflow_jax.encoders import meta
from musicflow_jax.inference import buckets, longform, model_folder
from musicflow_jax.inference.checks import (
    DRAFT_STEPS,
    MAX_DURATION,
    GenerateError,
    StageSettings,
    check_dtype,
    check_duration,
    check_finite,
    check_lora_scales,
    check_overlap,
    check_per_window,
    check_regions,
    check_seed,
    check_settings,
    check_texts,
    region_mask,
    resolve_device,
)
from musicflow_jax.inference.generation import Draft, Generation, GenerationFileError, read_draft
from musicflow_jax.models import lora as lora_lib
from musicflow_jax.models.params import WeightsError, build_with_params, flat_params
from musicflow_jax.models.transformer import FlowTransformer

AUDIO_FADE_S = 0.02  # crossfade where generated audio meets kept prompt audio
# prompt files past these are refused from their header: decoding is frames x channels, resampling x rate
MAX_PROMPT_CHANNELS, PROMPT_RATES = 8, (4_000, 384_000)
STAGE_NAMES = ("stage1", "stage2")
_BETWEEN: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("between_windows", default=None)


@contextlib.contextmanager
def between_windows(fn: Callable[[], None]) -> Any:
    """Within the block (this thread / task), every cascade run calls fn() before each stage, between its windows and
    before decoding: fn may block (another request's turn) or raise (stop this request)."""
    token = _BETWEEN.set(fn)
    try:
        yield
    finally:
        _BETWEEN.reset(token)


def _between() -> None:
    fn = _BETWEEN.get()
    if fn is not None:
        fn()


# ----------------------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class Stage:
    """One flow stage of the cascade: the stream it generates (at the backend's rate and dim), its config and
    model, the text encoder it was trained with, and its window (cfg.data.frames) for long-form generation."""

    name: str  # "stage1" | "stage2"
    stream: str  # "semantic" | "acoustic" (cfg.model.stage)
    cfg: Config
    model: Any  # FlowTransformer
    text: Any  # TextEncoder
    rate: float  # frames per second of its stream

    @property
    def settings(self) -> StageSettings:
        """The stage's default sampling settings (its config's `sample` section)."""
        return StageSettings.from_config(self.cfg)

    @property
    def window(self) -> int:
        return self.cfg.data.frames

    def frames(self, duration: float) -> int:
        """Frames needed to cover `duration` seconds (the audio is trimmed to the exact length)."""
        return frames_for(duration, self.rate)

    def num_windows(self, frames: int, overlap: float) -> int:
        return len(longform.plan_windows(frames, self.window, int(overlap * self.window)))

    def sample(self, key: jax.Array, text: tuple[jax.Array, np.ndarray], s: StageSettings, ctx_btd: np.ndarray,
               gen_t: np.ndarray, cond_btc: np.ndarray | None, overlap: float, progress: Callable[[int], None] | None,
               per_window: int = buckets.DEFAULT_PER_WINDOW, rows: Sequence[int] | None = None,
               eval_progress: bool = False, beat_btc: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """The stage over the whole sequence, window by window (longform.generate_windowed): (x (B, T, D), NFE).
        A window shorter than the trained one is padded to its length bucket (buckets.py; `per_window` 0: exact
        shapes). `progress(n)` is told of each window, or with `eval_progress` of each network evaluation (fixed-step
        solvers; dopri5 stays per window). `beat_btc`: the captions' beat grids over the whole sequence (model.beat)."""
        emb, mask = text
        nfe = [0]
        per_eval = progress is not None and eval_progress and s.solver != "dopri5"
        evals = expected_nfe(s.solver, s.steps) if per_eval else 0
        seen = [0]  # evaluations reported in the current window

        def on_eval(k: int) -> None:
            seen[0] += k
            progress(k)

        def on_window(k: int) -> None:  # the rest of the window's ticks (all of them for a window with nothing to do)
            if progress is not None:
                progress(max(evals - seen[0], 0) if per_eval else k)
            seen[0] = 0
            _between()

        def run(key: jax.Array, ctx: np.ndarray, gen: np.ndarray,
                conds: tuple[np.ndarray | None, np.ndarray | None]) -> np.ndarray:
            n = ctx.shape[1]
            nb = buckets.bucket_length(n, self.window, per_window)
            try:  # (the host copies wait for the result: a failed solve raises here)
                x, k = self._sample_window(key, emb, mask, s, ctx, gen, *conds, n, nb,
                                           on_eval if per_eval else None, rows)
                x, k = np.asarray(x), int(k)
            except jax.errors.JaxRuntimeError as e:
                if s.solver == "dopri5" and "maximum number of solver steps" in str(e):
                    raise GenerateError(f"max_steps: dopri5 ({self.name}) needed more than {s.max_steps} steps for "
                                        "one window: allow more steps or use a fixed-step solver (midpoint)",
                                        "max_steps") from None
                raise
            nfe[0] += k
            return x[:, :n]

        ov = int(overlap * self.window)
        x = longform.generate_windowed(run, key, ctx_btd, np.broadcast_to(gen_t, ctx_btd.shape[:2]),
                                       (cond_btc, beat_btc),
                                       window=self.window, overlap=ov, crossfade=max(1, ov // 4),
                                       progress=on_window)
        return x, nfe[0]

    def _sample_window(self, key: jax.Array, emb: jax.Array, mask: np.ndarray, s: StageSettings, ctx: np.ndarray,
                       gen: np.ndarray, cond: np.ndarray | None, grid: np.ndarray | None, n: int, nb: int,
                       on_eval: Callable[[int], None] | None, rows: Sequence[int] | None) -> tuple[jax.Array, Any]:
        """One window of n frames padded to its bucket nb."""
        pad = buckets.pad_frames
        return sample(self.model, key, text_emb=emb, text_mask=jnp.asarray(mask), ctx=jnp.asarray(pad(ctx, nb)),
                          gen_mask=jnp.asarray(pad(gen, nb)),
                          frame_mask=jnp.asarray(np.broadcast_to(buckets.frame_mask(n, nb), gen.shape[:1] + (nb,))),
                          cond=None if cond is None else jnp.asarray(pad(cond, nb)),
                          beat=None if grid is None else jnp.asarray(pad(grid, nb)),
                          solver=s.solver, steps=s.steps, cfg_scale=s.cfg_scale, sigma_min=self.cfg.flow.sigma_min,
                      temperature=s.temperature, rtol=self.cfg.sample.rtol, atol=self.cfg.sample.atol, on_eval=on_eval,
                      rows=None if rows is None else jnp.asarray(rows, jnp.uint32), max_steps=s.max_steps)

    def cost(self, rows: int, frames: int, s: StageSettings, overlap: float = 0.5) -> int:
        """An upper bound of the network frame-evaluations of sampling `rows` x `frames` frames: windows x window
        length x the most evaluations the solver can take (dopri5: at its max_steps) x rows, doubled by guidance."""
        guided = 2 if s.cfg_scale != 1.0 else 1
        return rows * guided * max_nfe(s.solver, s.steps, s.max_steps) * self.num_windows(frames, overlap) * min(
            frames, self.window)

    def progress_units(self, frames: int, s: StageSettings, overlap: float, eval_progress: bool) -> int:
        """Ticks `sample` reports over `frames` frames: windows, or network evaluations with `eval_progress`."""
        windows = self.num_windows(frames, overlap)
        return windows * expected_nfe(s.solver, s.steps) if eval_progress and s.solver != "dopri5" else windows


@dataclasses.dataclass
class _Request:
    """One cascade run: per stage, the context (B, T, C) in model space, which frames to generate (T,) and the
    sampling settings; a stage with nothing to generate keeps its context (restyle keeps stage 1's)."""

    mode: str
    texts: list[str]
    duration: float
    seed: int
    ctx: list[np.ndarray]
    gen: list[np.ndarray]
    settings: list[StageSettings]
    overlap: float
    progress: bool
    rows: list[int] | None = None  # noise row ids (default 0..B-1; a refined draft clip keeps its own)


# ----------------------------------------------------------------------------------------- the cascade


class MusicFlow:
    """The feature backend + two flow stages. Use `MusicFlow.load(...)`.

    `per_window`: length buckets per trained window (buckets.py; 0 = exact shapes, one compilation per duration);
    `device`: where the models live and run (None: JAX's default device); `eval_progress`: the progress bar moves
    per network evaluation (a host callback in the stages' executables, which JAX then does not write to the
    persistent compilation cache: for long-lived processes such as the app) instead of per window and stage;
    `turbo`: few-step students of `stages` (the folder's turbo/), which drafts use (None: drafts run `stages` at
    DRAFT_STEPS)."""

    def __init__(self, backend: FeatureBackend, stages: tuple[Stage, Stage], folder: Path, *,
                 per_window: int = buckets.DEFAULT_PER_WINDOW, device: jax.Device | None = None,
                 eval_progress: bool = False, turbo: tuple[Stage, Stage] | None = None):
        self.backend, self.stages, self.folder, self.turbo = backend, stages, folder, turbo
        self.per_window, self.device, self.eval_progress = per_window, device, eval_progress

    def _replace(self, **kw: Any) -> MusicFlow:
        args = dict(backend=self.backend, stages=self.stages, folder=self.folder, per_window=self.per_window,
                    device=self.device, eval_progress=self.eval_progress, turbo=self.turbo)
        args.update(kw)
        return MusicFlow(args.pop("backend"), args.pop("stages"), args.pop("folder"), **args)

    # --------------------------------------------------------------------- loading
    @classmethod
    def load(cls, checkpoint: str | Path | None = None, *, stage1: str | Path | None = None,
             stage2: str | Path | None = None, lora: Sequence[str | Path] = (),
             lora_scale: float | Sequence[float] = 1.0, dtype: str | None = None, device: str | None = None,
             per_window: int = buckets.DEFAULT_PER_WINDOW, eval_progress: bool = False, turbo: bool = False
             ) -> MusicFlow:
        """Load a model folder (default: the bundled model); stage1/stage2 replace its exported stages (its turbo/
        students, which are theirs, are then not used); `turbo`: its few-step students are the stages; `lora`:
        adapter files of fine-tunes (`python -m musicflow_jax.export` of a LoRA run) applied at `lora_scale` (one
        value, or one per file), see `with_lora`. `dtype`: the flow stages' compute dtype ("float32", "bfloat16";
        None: as trained; parameters stay float32, the ODE state too); `device`: "cpu", "gpu", "tpu" or "gpu:1"
        (None: JAX's default); `per_window`, `eval_progress`: see the class."""
        dev = resolve_device(device)
        with _on(dev):
            mf = cls._load(checkpoint, stage1, stage2, lora, lora_scale, dtype, dev, per_window, turbo)
        mf.eval_progress = bool(eval_progress)
        return mf

    @classmethod
    def _load(cls, checkpoint: str | Path | None, stage1: str | Path | None, stage2: str | Path | None,
              lora: Sequence[str | Path], lora_scale: float | Sequence[float], dtype: str | None,
              device: jax.Device | None, per_window: int, turbo: bool = False) -> MusicFlow:
        check_dtype(dtype)
        check_per_window(per_window)
        lora = [lora] if isinstance(lora, (str, Path)) else list(lora)
        scales = check_lora_scales(lora_scale, len(lora))
        mf = model_folder.read(checkpoint, stage1=stage1, stage2=stage2, dtype=dtype, turbo=turbo)

        def stages(configs: Sequence[Config], models: Sequence[Any]) -> tuple[Stage, Stage]:
            s1, s2 = (Stage(name, cfg.model.stage, cfg, model, text, mf.backend.rates[cfg.model.stage])
                      for name, cfg, model, text in zip(STAGE_NAMES, configs, models, mf.texts))
            return s1, s2

        students = None if turbo or stage1 or stage2 else model_folder.read_turbo(mf, dtype)
        flow = cls(mf.backend, stages(mf.configs, mf.models), mf.folder, per_window=per_window, device=device,
                   turbo=None if students is None else stages(*students))
        for path, scale in zip(lora, scales):
            flow = flow.with_lora(path, scale)
        return flow

    def with_lora(self, adapters: str | Path, scale: float = 1.0) -> MusicFlow:
        """A cascade whose stage (the one the adapter file was trained on) has the fine-tune's adapters applied at
        `scale` (0 = this model, 1 = the fine-tuned one; models/lora.py's apply_adapters). This model is unchanged."""
        with _on(self.device):
            return self._with_lora(adapters, scale)

    def _with_lora(self, adapters: str | Path, scale: float) -> MusicFlow:
        scale = check_lora_scales(scale, 1)[0]
        try:
            meta, tensors = lora_lib.read_adapters(adapters)
            stream = meta.get("stage", "")
            idx = [st.stream for st in self.stages].index(stream) if stream in ("semantic", "acoustic") else -1
            if idx < 0:
                raise lora_lib.FineTuneError(f"adapter file {adapters} names no stage ({stream!r})")
            stage = self.stages[idx]
            trained = config_lib.from_json(meta["config"]).model
            for f in ("stage", "feature_dim", "cond_dim", "dim", "depth", "heads", "mlp_dim", "time_dim"):
                if getattr(trained, f) != getattr(stage.cfg.model, f):
                    raise lora_lib.FineTuneError(
                        f"adapter file {adapters} was trained on a {stream} stage with model.{f}="
                        f"{getattr(trained, f)}, this model's {stage.name} has {getattr(stage.cfg.model, f)}: apply "
                        "it to the model it was fine-tuned from")
            flat = lora_lib.apply_adapters(flat_params(stage.model), meta, tensors, float(scale), str(adapters))
            model = build_with_params(lambda: FlowTransformer(stage.cfg, rngs=nnx.Rngs(0)), flat, str(adapters))
        except (lora_lib.FineTuneError, WeightsError, ConfigError) as e:
            raise GenerateError(" ".join(str(e).split()), "lora") from None
        stages = list(self.stages)
        stages[idx] = dataclasses.replace(stage, model=model)
        return self._replace(stages=(stages[0], stages[1]), turbo=None)  # the students are the base model's

    @property
    def sample_rate(self) -> int:
        return self.backend.sample_rate

    def cost(self, rows: int, duration: float, settings: Sequence[StageSettings | None], overlap: float = 0.5) -> int:
        """An upper bound of a request's network frame-evaluations (`Stage.cost` summed over the stages that run:
        settings None = a stage that does not; restyle and refine run stage 2 alone), checked before it runs."""
        return sum(st.cost(rows, st.frames(duration), check_settings(s, st.name), overlap)
                   for st, s in zip(self.stages, settings) if s is not None)

    # --------------------------------------------------------------------- public modes
    def generate(self, texts: Sequence[str], duration: float = 10.0, *, seed: int = 0,
                 stage1: StageSettings | None = None, stage2: StageSettings | None = None,
                 overlap: float = 0.5, progress: bool = True, draft: bool = False) -> Generation:
        """Text-to-music: `duration` seconds per text, batched. `draft`: a quick listen - the few-step students
        (`turbo`) at their own settings where the model has them, else both stages at DRAFT_STEPS midpoint steps
        (where stage1/stage2 do not say otherwise); `refine` then redoes stage 2 of a chosen clip at full quality,
        keeping its semantic stream."""
        if draft and self.turbo is not None:
            return self._replace(stages=self.turbo, turbo=None).generate(
                texts, duration, seed=seed, stage1=stage1, stage2=stage2, overlap=overlap, progress=progress,
                draft=True)
        texts, duration = check_texts(texts), check_duration(duration)
        b = len(texts)
        ctx = [np.zeros((b, st.frames(duration), self.backend.dims[st.stream]), np.float32) for st in self.stages]
        gen = [np.ones(c.shape[1], bool) for c in ctx]
        if draft:
            stage1, stage2 = (s or self.draft_settings(st) for s, st in zip((stage1, stage2), self.stages))
        return self._run(_Request("draft" if draft else "generate", texts, duration, seed, ctx, gen,
                                  self._settings(stage1, stage2), overlap, progress))

    @property
    def draft_stages(self) -> tuple[Stage, Stage]:
        """The stages a draft runs: the few-step students where the model has them, else its stages."""
        return self.turbo or self.stages

    @staticmethod
    def draft_settings(stage: Stage) -> StageSettings:
        """A draft's sampling for `stage`: DRAFT_STEPS midpoint steps, the stage's own guidance and temperature; a
        few-step student (its config samples with the average-velocity solver) at its own settings."""
        if stage.settings.solver == "average":
            return stage.settings
        return StageSettings(steps=DRAFT_STEPS, solver="midpoint", cfg_scale=stage.settings.cfg_scale,
                             temperature=stage.settings.temperature)

    def refine(self, draft: Generation | Draft | str | Path, texts: Sequence[str] | None = None, *,
               seed: int | None = None, stage2: StageSettings | None = None, overlap: float = 0.5,
               progress: bool = True) -> Generation:
        """Stage 2 again at full quality (its default settings, or `stage2`) over a draft's semantic stream, which
        is kept bit for bit: `draft` is a Generation (every clip), a Draft or a .draft.npz path (one clip,
        `Generation.save_draft` / generate --draft). The text and seed default to the draft's (same seed and row: the
        same stage-2 noise, so the refined clip is the draft made properly); `texts` changes the description."""
        if isinstance(draft, (str, Path)):
            try:
                draft = read_draft(draft)
            except GenerationFileError as e:
                raise GenerateError(str(e), "draft") from None
        if isinstance(draft, Draft):
            sem, d_texts, d_seed, duration = draft.semantic[None], [draft.text], draft.seed, draft.duration
            rows = [draft.row]
        elif isinstance(draft, Generation):
            if draft.mode not in ("draft", "generate", "refine"):
                raise GenerateError(f"draft is a {draft.mode} result: refine works on text-to-music results (draft, "
                                    "generate, refine); stage 2 would regenerate the prompt's frames", "draft")
            sem, d_texts, d_seed, duration = draft.semantic, draft.texts, draft.seed, draft.duration
            rows = list(draft.rows) or list(range(len(draft.texts)))
        else:
            raise GenerateError(f"draft {type(draft).__name__}: give a Generation, a Draft or a .draft.npz path",
                                "draft")
        texts = check_texts(d_texts if texts is None else texts)
        if len(texts) != sem.shape[0]:
            if sem.shape[0] != 1:
                raise GenerateError(f"texts: {len(texts)} texts for a draft of {sem.shape[0]} clips; give one per "
                                    "clip", "texts")
            sem, rows = np.repeat(sem, len(texts), axis=0), rows * len(texts)
        st1, st2 = self.stages
        duration = check_duration(duration, "draft")
        want = (st1.frames(duration), self.backend.dims[st1.stream])
        # the duration comes back from the audio length (whole samples): the stream may hold one frame more
        if sem.ndim != 3 or sem.shape[2] != want[1] or not 0 <= sem.shape[1] - want[0] <= 1:
            raise GenerateError(f"draft: its semantic stream is {sem.shape[1:]} (frames, dims) but this model's "
                                f"stage 1 makes {want} for {duration:g} s: refine with the model that made the draft",
                                "draft")
        ctx = [np.asarray(sem, np.float32),
               np.zeros((len(texts), st2.frames(duration), self.backend.dims[st2.stream]), np.float32)]
        gen = [np.zeros(ctx[0].shape[1], bool), np.ones(ctx[1].shape[1], bool)]
        return self._run(_Request("refine", texts, duration, d_seed if seed is None else seed, ctx, gen,
                                  self._settings(None, stage2), overlap, progress, rows))

    def continue_(self, texts: Sequence[str], prompt: str | Path | np.ndarray, duration: float, *, seed: int = 0,
                  stage1: StageSettings | None = None, stage2: StageSettings | None = None, overlap: float = 0.5,
                  progress: bool = True) -> Generation:
        """Continuation: the prompt audio is kept as context and `duration` seconds in total are returned."""
        texts, duration = check_texts(texts), check_duration(duration)
        audio = self.read_prompt(prompt)
        p = len(audio) / self.sample_rate
        if duration <= p + 1.0 / self.stages[0].rate:
            raise GenerateError(f"duration {duration:g} s must exceed the prompt's length ({p:.2f} s) for "
                                "continuation: it is the total length of the result", "duration")
        return self._in_context("continue", texts, audio, duration, [(p, duration)], seed,
                                self._settings(stage1, stage2), overlap, progress)

    def infill(self, texts: Sequence[str], prompt: str | Path | np.ndarray, regions: Sequence[tuple[float, float]],
               *, seed: int = 0, stage1: StageSettings | None = None, stage2: StageSettings | None = None,
               overlap: float = 0.5, progress: bool = True) -> Generation:
        """Infilling: regenerate `regions` ([(start, end), ...] seconds) of the prompt; everything else is kept."""
        texts = check_texts(texts)
        audio = self.read_prompt(prompt)
        p = len(audio) / self.sample_rate
        regs = check_regions(regions, p)
        return self._in_context("infill", texts, audio, check_duration(p, "prompt"), regs, seed,
                                self._settings(stage1, stage2), overlap, progress)

    def restyle(self, texts: Sequence[str], prompt: str | Path | np.ndarray, *, seed: int = 0,
                stage2: StageSettings | None = None, overlap: float = 0.5, progress: bool = True) -> Generation:
        """Semantic-stage editing: keep the prompt's semantic stream, re-run stage 2 with new text."""
        texts = check_texts(texts)
        audio = self.read_prompt(prompt)
        duration = check_duration(len(audio) / self.sample_rate, "prompt")
        sem_p = self.encode(audio)[0]
        b, st1, st2 = len(texts), *self.stages
        ctx = [_tile(sem_p, b, st1.frames(duration)),
               np.zeros((b, st2.frames(duration), self.backend.dims[st2.stream]), np.float32)]
        gen = [np.zeros(ctx[0].shape[1], bool), np.ones(ctx[1].shape[1], bool)]
        g = self._run(_Request("restyle", texts, duration, seed, ctx, gen, self._settings(None, stage2), overlap,
                               progress))
        g.prompt_semantic = sem_p
        return g

    def read_prompt(self, prompt: str | Path | np.ndarray, max_seconds: float = MAX_DURATION) -> np.ndarray:
        """Mono float32 prompt at the backend sample rate (file path or array already at that rate). A file longer
        than `max_seconds` is refused from its header, before its samples are decoded."""
        if isinstance(prompt, np.ndarray):
            audio = np.asarray(prompt, np.float32).reshape(-1)
            if audio.size > max_seconds * self.sample_rate:
                raise GenerateError(f"prompt is {audio.size / self.sample_rate:.1f} s long: at most {max_seconds:g} s; "
                                    "cut it first", "prompt")
        else:
            path = Path(prompt)
            if not path.is_file():
                raise GenerateError(f"prompt {path} does not exist: give a readable audio file (WAV, FLAC, OGG)",
                                    "prompt")
            try:
                info = audio_info(path)
            except AudioError:
                raise GenerateError(f"prompt {path} cannot be read as audio: convert it to WAV/FLAC", "prompt"
                                    ) from None
            if info.seconds > max_seconds:
                raise GenerateError(f"prompt {path} is {info.seconds:.1f} s long: at most {max_seconds:g} s; cut it "
                                    "first", "prompt")
            if info.channels > MAX_PROMPT_CHANNELS or not PROMPT_RATES[0] <= info.sample_rate <= PROMPT_RATES[1]:
                lo, hi = PROMPT_RATES
                raise GenerateError(f"prompt {path} has {info.channels} channels at {info.sample_rate} Hz: give audio "
                                    f"with at most {MAX_PROMPT_CHANNELS} channels at {lo}..{hi} Hz (mono or stereo "
                                    "WAV/FLAC)", "prompt")
            try:
                audio, _ = read_audio(path, sample_rate=self.sample_rate, mono=True)
            except Exception as e:  # noqa: BLE001 - soundfile/libsndfile raise several types on bad files
                raise GenerateError(f"prompt {path} cannot be read as audio ({type(e).__name__}): convert it to "
                                    "WAV/FLAC", "prompt") from None
        hop = self.backend.acoustic.hop_length
        if audio.size < 2 * hop or not np.isfinite(audio).all():
            raise GenerateError(f"prompt is empty, too short (< {2 * hop} samples = {2 * hop / self.sample_rate:.3f} "
                                "s) or holds NaN/inf: give a real recording of at least 0.1 s", "prompt")
        return audio

    # --------------------------------------------------------------------- internals
    def _settings(self, stage1: StageSettings | None, stage2: StageSettings | None) -> list[StageSettings]:
        out = [check_settings(s or st.settings, st.name) for s, st in zip((stage1, stage2), self.stages)]
        for s, st in zip(out, self.stages):
            if (s.solver == "average") != st.cfg.model.interval:
                raise GenerateError(f"solver {s.solver} ({st.name}): " + (
                    "'average' steps a few-step student (model.interval); this stage is a flow: choose euler, "
                    "midpoint, heun or dopri5" if s.solver == "average" else
                    "this stage is a few-step student (model.interval): sample it with solver 'average'"), "solver")
        return out

    def encode(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mono audio at sample_rate -> (semantic (T_s, C), acoustic (T_a, D)) in model space (what the stages see)."""
        be = self.backend
        with _on(self.device):
            return (be.normalize("semantic", be.encode_semantic(audio[None])[0]),
                    be.normalize("acoustic", be.encode_acoustic(audio[None])[0]))

    def _in_context(self, mode: str, texts: list[str], audio: np.ndarray, duration: float,
                    regions: list[tuple[float, float]], seed: int, settings: list[StageSettings], overlap: float,
                    progress: bool) -> Generation:
        prompts = self.encode(audio)
        p = len(audio) / self.sample_rate
        ctx, gen = [], []
        for st, x_p in zip(self.stages, prompts):
            n = st.frames(duration)
            g = region_mask(regions, n, st.rate)
            # frames the prompt does not cover (continue: also its last, partly zero-padded frame)
            g |= np.arange(n) >= (frames.frames_at(p, st.rate) if mode == "continue" else len(x_p))
            ctx.append(_tile(x_p, len(texts), n))
            gen.append(g)
        g = self._run(_Request(mode, texts, duration, seed, ctx, gen, settings, overlap, progress))
        n_samples = g.audio.shape[-1]
        keep = np.zeros(n_samples, bool)
        keep[: min(len(audio), n_samples)] = True
        keep &= ~region_mask(regions, n_samples, float(self.sample_rate))
        prompt_full = np.zeros(n_samples, np.float32)
        prompt_full[: min(len(audio), n_samples)] = audio[:n_samples]
        fade = int(round(AUDIO_FADE_S * self.sample_rate))
        g.audio = longform.audio_crossfade(prompt_full[None], g.audio, keep, fade)
        g.prompt_semantic, g.prompt_acoustic = prompts
        return g

    def _run(self, r: _Request) -> Generation:
        """Run the stages in order: each generates its masked frames given the text, its context and the previous
        stage's output upsampled to its frame rate; then decode the last stream to audio."""

        check_overlap(r.overlap)
        check_seed(r.seed)
        t0 = time.perf_counter()
        runs = [(st, ctx, gen, s) for st, ctx, gen, s in zip(self.stages, r.ctx, r.gen, r.settings)]
        total = sum(st.progress_units(len(g), s, r.overlap, self.eval_progress) for st, _, g, s in runs if g.any()) + 1
        nfe = {st.name: 0 for st in self.stages}
        outs: list[np.ndarray] = []
        encoded: dict[int, tuple[jax.Array, np.ndarray]] = {}  # one encoding per distinct text encoder
        with _on(self.device), tqdm(total=total, desc=f"{r.mode} {r.duration:g}s x{len(r.texts)}",
                                    disable=not r.progress, leave=False,
                                    unit="eval" if self.eval_progress else "window") as bar:
            key = jax.random.key(int(r.seed))
            for i, (st, ctx, gen, s) in enumerate(runs):
                cond = None
                if outs:  # the previous stage's stream on this stage's frame grid
                    prev, prev_rate = outs[-1], self.stages[i - 1].rate
                    cond = prev[:, frames.upsample_index(len(gen), prev.shape[1], prev_rate, st.rate)]
                if not gen.any():
                    outs.append(ctx.astype(np.float32))
                    continue
                _between()
                if id(st.text) not in encoded:
                    encoded[id(st.text)] = st.text(r.texts)
                bar.set_postfix_str(st.name)
                x, nfe[st.name] = st.sample(jax.random.fold_in(key, i + 1), encoded[id(st.text)], s, ctx, gen, cond,
                                            r.overlap, bar.update if r.progress else None, self.per_window, r.rows,
                                            self.eval_progress, beat_grid(st, r.texts, ctx, gen))
                check_finite(x, f"{st.name} ({st.stream} stream)")
                outs.append(x)
            bar.set_postfix_str("decoder")
            audio = np.concatenate([self._decode_row(outs[-1][i:i + 1]) for i in range(len(r.texts))]
                                   )[:, : int(round(r.duration * self.sample_rate))]
            check_finite(audio, f"the {self.backend.acoustic.kind} decoder")
            if r.mode in ("generate", "draft", "restyle", "refine"):  # keep clear of clipping (prompt modes keep
                peak = np.abs(audio).max(axis=-1, keepdims=True)  # the prompt's level)
                audio = np.where(peak > 0.95, audio * (0.95 / np.maximum(peak, 1e-9)), audio).astype(np.float32)
            bar.update(1)
        settings = {st.name: dataclasses.asdict(s) for st, _, g, s in runs if g.any()}
        return Generation(audio=audio, sample_rate=self.sample_rate, semantic=outs[0], acoustic=outs[1],
                          texts=list(r.texts), seed=int(r.seed), mode=r.mode, nfe=nfe,
                          seconds=time.perf_counter() - t0, settings=settings, model=str(self.folder),
                          rows=list(r.rows) if r.rows is not None else list(range(len(r.texts))))

    def _decode_row(self, x_1td: np.ndarray) -> np.ndarray:
        """One clip's audio: clips are decoded one at a time (a waiting request may go between them; one compiled
        decoder per length bucket whatever the batch)."""
        _between()
        return self.decode(x_1td)

    def decode(self, x_btd: np.ndarray) -> np.ndarray:
        """The last stage's stream (model space, (B, T, D)) -> audio (B, T * hop). The latents are padded to their
        length bucket with their mirror image (what the decoder's own reflect padding sees) and the audio trimmed,
        so a new duration in a decoded bucket does not recompile the decoder."""
        last = self.stages[-1]
        z = self.backend.denormalize(last.stream, x_btd)
        n = z.shape[1]
        z = buckets.pad_frames(z, buckets.bucket_length(n, last.window, self.per_window), mode="reflect")
        with _on(self.device):
            audio = self.backend.decode(z)
        return audio[:, : n * self.backend.acoustic.hop_length]


def beat_grid(stage: Stage, texts: Sequence[str], ctx_btc: np.ndarray, gen_t: np.ndarray) -> np.ndarray | None:
    """The captions' beat grids over the stage's frames (model.beat; None without): from the clip's first frame, or
    in phase with the prompt's onsets where the stage has a prompt (core/beat.py)."""
    if not stage.cfg.model.beat:
        return None
    bpm_b = meta.parse(texts)[0]
    known = ~np.asarray(gen_t, bool)
    beat0_b = [beat.phase_of(x, bpm, stage.rate, known) if known.any() else 0.0 for x, bpm in zip(ctx_btc, bpm_b)]
    return beat.features(bpm_b, np.asarray(beat0_b), len(gen_t), stage.rate)


def _on(device: jax.Device | None) -> Any:
    """Run on `device` (None: JAX's default device)."""
    return contextlib.nullcontext() if device is None else jax.default_device(device)


def frames_for(duration: float, rate: float) -> int:
    """Frames needed to cover `duration` seconds at `rate` Hz (the audio is trimmed to the exact length)."""
    return int(math.ceil(duration * rate - 1e-6))


def _tile(x_tc: np.ndarray, b: int, n: int) -> np.ndarray:
    """(b, n, C): the first n frames of x, zero-padded (frames beyond the prompt are generated anyway)."""
    x = frames.pad_or_crop(x_tc.astype(np.float32), n)[0]
    return np.broadcast_to(x, (b, n, x.shape[-1])).copy()
