"""A MusicFlow model folder: the one module that writes and reads it.

    stage1.safetensors   stage 1 (text -> semantic), models/stage_file.py's format
    stage2.safetensors   stage 2 (semantic + text -> acoustic)
    features.json        the feature backend (backends/): its parts, rates, dims and the normalisation stats of both
                         streams, with the encoder files it names copied beside it
    text_encoder/        the exact text encoder stage 1 was trained with (a converted folder, encoders/text.py)
    turbo/               optional: few-step students of the two stages (stage1/stage2.safetensors distilled from
                         them, flow.distill_loss; model.interval, sampled in a few average-velocity jumps with the
                         guidance in their weights) on the same backend and text encoder: drafts use them, and
                         `turbo=True` (generate --turbo) makes them the cascade

Written by `assemble` (exported stages + the precompute index they were trained on + the encoders' files; CLI
`python -m musicflow_jax.assemble`) and read by `read` (what `MusicFlow.load` builds the cascade from). A folder
holding only features.json (`write_backend`) is a backend folder: evaluation measures a backend's round trip with
it before any flow model exists.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from musicflow_jax.backends import BackendError, FeatureBackend, build_part, load_backend
from musicflow_jax.backends.registry import PartFiles, with_files
from musicflow_jax.core.config import Config, ConfigError, TextConfig
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.inference.checks import GenerateError
from musicflow_jax.models.params import WeightsError
from musicflow_jax.models.stage_file import StageError, load_stage
from musicflow_jax.models.transformer import FlowTransformer

BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "bundled"
STAGE_FILES = ("stage1.safetensors", "stage2.safetensors")
STAGE_STREAMS = ("semantic", "acoustic")
TEXT_ENCODER_DIR = "text_encoder"
TURBO_DIR = "turbo"


@dataclasses.dataclass
class ModelFolder:
    """What a model folder holds, loaded: the backend and, per stage, its config, model and text encoder (a stage
    trained with the same text encoder as stage 1 shares its object: texts are encoded once)."""

    folder: Path
    backend: FeatureBackend
    configs: list[Config]
    models: list[FlowTransformer]
    texts: list[TextEncoder]


def read(folder: str | Path | None = None, *, stage1: str | Path | None = None, stage2: str | Path | None = None,
         dtype: str | None = None, turbo: bool = False) -> ModelFolder:
    """Load a model folder (default: the bundled model); `stage1` / `stage2` replace its stage files; `dtype` the
    stages' compute dtype; `turbo`: its turbo/ students are the stages. Every problem is a GenerateError naming the
    file and the fix."""
    folder = Path(folder) if folder else BUNDLED
    if not folder.is_dir():
        if folder.suffix == ".safetensors":
            raise GenerateError(f"checkpoint {folder} is a single stage file: pass it as stage1=/stage2= "
                                "(checkpoint takes a model folder)", "checkpoint")
        raise GenerateError(f"checkpoint {folder} is not a folder: pass a MusicFlow model folder "
                            "(stage1/stage2 .safetensors + features.json + text_encoder/)", "checkpoint")
    if turbo and not has_turbo(folder):
        raise GenerateError(f"turbo: model folder {folder} has no {TURBO_DIR}/ stages ({TURBO_DIR}/stage1.safetensors, "
                            f"{TURBO_DIR}/stage2.safetensors): distil them (distill.teacher, docs/training.md; the "
                            "bundled model's: python tools/train_bundled.py --only turbo) or generate without turbo",
                            "turbo")
    try:
        backend = load_backend(folder)
        base = folder / TURBO_DIR if turbo else folder
        files = [Path(f) if f else base / name for f, name in zip((stage1, stage2), STAGE_FILES)]
        loaded = [load_stage(f, stream, dtype) for f, stream in zip(files, STAGE_STREAMS)]
        configs, models = [c for c, _ in loaded], [m for _, m in loaded]
        check_compatible(configs, backend)
        texts = text_encoders(folder, configs)
    except (StageError, WeightsError, BackendError, ConfigError) as e:
        raise GenerateError(str(e).replace("\n", " ")) from None
    return ModelFolder(folder, backend, configs, models, texts)


def has_turbo(folder: str | Path) -> bool:
    """Whether the folder holds few-step students of its stages (turbo/)."""
    return all((Path(folder) / TURBO_DIR / name).is_file() for name in STAGE_FILES)


def read_turbo(mf: ModelFolder, dtype: str | None = None) -> tuple[list[Config], list[FlowTransformer]] | None:
    """The (configs, models) of `mf`'s turbo/ students (None without them), checked against the folder's stages;
    they share mf's backend and text encoder objects."""
    if not has_turbo(mf.folder):
        return None
    return _students(mf, [mf.folder / TURBO_DIR / name for name in STAGE_FILES], dtype)


def _students(mf: ModelFolder, files: Sequence[Path], dtype: str | None = None
              ) -> tuple[list[Config], list[FlowTransformer]]:
    """Few-step students of `mf`'s stages from two stage files: model.interval, the backend's streams, the
    teacher's text encoder and text settings."""
    try:
        loaded = [load_stage(f, stream, dtype) for f, stream in zip(files, STAGE_STREAMS)]
    except (StageError, WeightsError) as e:
        raise GenerateError(str(e).replace("\n", " "), "turbo") from None
    configs = [c for c, _ in loaded]
    check_compatible(configs, mf.backend)
    for f, cfg, teacher in zip(files, configs, mf.configs):
        if not cfg.model.interval:
            raise GenerateError(f"turbo: {f} is not a few-step student (model.interval=false): distil one from "
                                f"{teacher.name} (distill.teacher)", "turbo")
        if text_encoder_id(cfg) != text_encoder_id(teacher) or cfg.text != teacher.text:
            raise GenerateError(f"turbo: {f} reads text unlike its teacher {teacher.name} ({cfg.text} vs "
                                f"{teacher.text}): distil the students from this folder's stages", "turbo")
    return configs, [m for _, m in loaded]


def text_encoder_id(cfg: Config) -> tuple[str, int, int | None]:
    """What fixes a stage's text-encoder weights: its converted checkpoint, or the embedded T5's dim and seed."""
    return cfg.text.checkpoint, cfg.text.dim, None if cfg.text.checkpoint else cfg.train.seed


def text_encoders(folder: Path, configs: Sequence[Config]) -> list[TextEncoder]:
    """The text encoder each stage was trained with. The folder's `text_encoder/` is stage 1's: stage 1 uses it; a
    later stage with the same encoder shares stage 1's object, one with another encoder gets it rebuilt from its
    config (cfg.text / cfg.train.seed)."""
    shipped_dir = folder / TEXT_ENCODER_DIR
    out: list[TextEncoder] = []
    for i, cfg in enumerate(configs):
        same = i > 0 and text_encoder_id(cfg) == text_encoder_id(configs[0])
        if same and cfg.text == configs[0].text:
            out.append(out[0])
        elif (i == 0 or same) and shipped_dir.is_dir():
            out.append(TextEncoder.load(TextConfig(checkpoint=str(shipped_dir), max_len=cfg.text.max_len,
                                                   dim=cfg.text.dim, meta=cfg.text.meta)))
        else:
            out.append(TextEncoder.load(cfg.text, cfg.train.seed))
    return out


def check_compatible(cfgs: Sequence[Config], backend: FeatureBackend) -> None:
    """The stages fit each other and the backend: dims and frame rates (defined by the backend) agree."""
    cfg1, cfg2 = cfgs
    if cfg2.model.cond_dim != cfg1.model.feature_dim:
        raise GenerateError(f"mismatched stages: stage 2 expects {cfg2.model.cond_dim}-d semantic features but stage 1 "
                            f"makes {cfg1.model.feature_dim}-d ones; use the two stages trained together")
    for c in cfgs:
        stream = c.model.stage
        if c.model.feature_dim != backend.dims[stream]:
            raise GenerateError(f"mismatched config: {c.name} makes {c.model.feature_dim}-d {stream} features but the "
                                f"model folder's {backend.name} backend has {backend.dims[stream]}-d ones")
        want = (backend.rates["semantic"], backend.rates["acoustic"])
        if (c.data.semantic_rate, c.data.acoustic_rate) != want:
            raise GenerateError(f"config {c.name}: data.semantic_rate/acoustic_rate {c.data.semantic_rate:g}/"
                                f"{c.data.acoustic_rate:g} Hz differ from the {backend.name} backend's "
                                f"{want[0]:g}/{want[1]:g} Hz; retrain with the backend's rates")


# ----------------------------------------------------------------------------------------- writing


def backend_from_index(index: dict[str, Any], files: PartFiles) -> FeatureBackend:
    """The backend the features were precomputed with, with their stats, reading the converted encoder folders in
    `files` in place of the ones precompute read (an HF folder cannot be loaded at run time)."""
    try:
        spec = {**index["backend"], "stats": {k: {"mean": index["stats"][k]["mean"], "std": index["stats"][k]["std"]}
                                              for k in STAGE_STREAMS}}
    except (KeyError, TypeError) as e:
        raise BackendError(f"the index has no {e} entry: rerun precompute (it writes the backend and stats)") from None
    parts = {s: with_files(spec[s], files, "the precomputed features' backend", new_folders=True)
             for s in STAGE_STREAMS}
    return FeatureBackend.from_json({**spec, **parts}, where="--index backend")


def write(out: str | Path, stage1: str | Path, stage2: str | Path, backend: FeatureBackend,
          text_encoder: TextEncoder) -> Path:
    """A model folder at `out` from two stage files, the backend (with stats) and stage 1's text encoder."""
    out = Path(out)
    load_stage(stage1, "semantic")
    load_stage(stage2, "acoustic")
    out.mkdir(parents=True, exist_ok=True)
    for src, name in zip((stage1, stage2), STAGE_FILES):
        if Path(src).resolve() != (out / name).resolve():
            shutil.copy(src, out / name)
    text_encoder.save(out / TEXT_ENCODER_DIR)
    backend.save(out)  # features.json + the encoder files it names
    return out


def assemble(stage1: str | Path, stage2: str | Path, index_file: str | Path, out: str | Path,
             files: PartFiles = PartFiles()) -> Path:  # noqa: B008 - frozen, immutable default
    """A model folder from the two exported stages, the index.json of the features they were trained on and the
    encoders' converted folders (`files`; weight-free parts need none). The text encoder is rebuilt from stage 1's
    config (the embedded T5 from its seed, or its converted checkpoint)."""
    index_file = Path(index_file)
    if not index_file.is_file():
        raise GenerateError(f"index {index_file} does not exist: pass the index.json of the features the stages "
                            "were trained on", "index")
    try:
        cfg1, _ = load_stage(stage1, "semantic")
        backend = backend_from_index(json.loads(index_file.read_text()), files)
        return write(out, stage1, stage2, backend, TextEncoder.load(cfg1.text, cfg1.train.seed))
    except (StageError, WeightsError, BackendError, ConfigError, ValueError) as e:
        raise GenerateError(" ".join(str(e).split())) from None


def write_turbo(out: str | Path, stage1: str | Path, stage2: str | Path) -> Path:
    """Copy two few-step students (exported stage files distilled from the folder's stages) into the model folder
    `out` as its turbo/ stages, after checking they fit it."""
    out = Path(out)
    files = [Path(stage1), Path(stage2)]
    _students(read(out), files)
    (out / TURBO_DIR).mkdir(parents=True, exist_ok=True)
    for src, name in zip(files, STAGE_FILES):
        if src.resolve() != (out / TURBO_DIR / name).resolve():
            shutil.copy(src, out / TURBO_DIR / name)
    return out / TURBO_DIR


def write_backend(out: str | Path, semantic: dict[str, Any], acoustic: dict[str, Any]) -> Path:
    """A backend folder (features.json + the parts' files) from two part specs, e.g. the weight-free chroma
    semantic part with a codec trained by `python -m musicflow_jax.train_codec`."""
    parts = {"semantic": build_part("semantic", semantic), "acoustic": build_part("acoustic", acoustic)}
    return FeatureBackend(parts["semantic"], parts["acoustic"]).save(out)
