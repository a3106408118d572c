"""Generate music from text: `python -m musicflow_jax.generate --text "..." --duration 10 --out out.wav`.

A thin CLI over the Python API (musicflow_jax/inference/cascade.py's MusicFlow). Modes: generate (text-to-music,
default), continue (--prompt-audio a.wav: keep it, generate the rest up to --duration), infill (--regions
3.0-5.5,8-9: regenerate those seconds of the prompt), restyle (keep the prompt's semantic features, re-run stage 2
with the new text).
Few steps: --turbo samples with the model folder's few-step students (its turbo/ stages: 2 network evaluations per
window and stage, guidance built in). Draft then refine: --draft generates quickly (the students where the folder
has them, else 4 midpoint steps per stage) and writes <out>.draft.npz beside each WAV; --refine <out>.draft.npz
re-runs stage 2 of that clip at full quality, its semantic stream kept bit for bit.
Per-stage options take one value for both stages or "STAGE1,STAGE2" (e.g. --steps 16,8 --cfg 3,2). Without
--checkpoint the bundled model (musicflow_jax/assets/bundled) is used. Each WAV (with text/seed/config in its
RIFF INFO metadata) gets a spectrogram PNG beside it. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from musicflow_jax.cli import _common
from musicflow_jax.core.audio import write_wav
from musicflow_jax.core.config import config_hash
from musicflow_jax.inference.cascade import MusicFlow
from musicflow_jax.inference.checks import (
    GenerateError,
    StageSettings,
    check_duration,
    check_lora_scales,
    check_seed,
    check_texts,
    parse_regions,
)
from musicflow_jax.inference.generation import Generation, GenerationFileError, read_draft
from musicflow_jax.utils import atomic_io
from musicflow_jax.utils.plots import spectrogram_png

FLAGS = {"duration": "--duration", "regions": "--regions", "prompt": "--prompt-audio", "steps": "--steps",
         "solver": "--solver", "cfg_scale": "--cfg", "temperature": "--temperature", "overlap": "--overlap",
         "checkpoint": "--checkpoint", "texts": "--text", "seed": "--seed", "draft": "--refine", "dtype": "--dtype",
         "device": "--device", "lora": "--lora",
         "lora_scale": "--lora-scale",
         "turbo": "--turbo"}  # API parameter (GenerateError.param) -> the flag that sets it


def build_parser() -> argparse.ArgumentParser:
    ap = _common.parser("generate", __doc__)
    ap.add_argument("--text", action="append", default=[], help="description of the music (repeat for a batch)")
    ap.add_argument("--prompts-file", help="one prompt per line, or JSONL lines {\"text\", \"duration\"?, \"seed\"?, "
                    "\"out\"?}")
    ap.add_argument("--duration", default=None, help="seconds (total length for --mode continue); default 10; "
                    "infill/restyle keep the prompt's length")
    ap.add_argument("--out", default="out.wav", help="WAV path; with several prompts out_<i>.wav")
    ap.add_argument("--seed", type=int, default=None, help="default 0 (--refine: the draft's)")
    ap.add_argument("--steps", default=None, help="ODE steps, N or N1,N2 per stage (default: the stage configs)")
    ap.add_argument("--solver", default=None, help="euler|midpoint|heun|dopri5, or S1,S2 per stage")
    ap.add_argument("--cfg", default=None, help="classifier-free guidance scale, W or W1,W2 per stage")
    ap.add_argument("--temperature", default=None, help="scale of the starting noise, T or T1,T2 per stage, in (0, 2] "
                    "(1 = as trained; default: the stage configs')")
    ap.add_argument("--batch", type=int, default=8, help="prompts generated together on the device")
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--stage1-checkpoint", default=None, help="exported stage-1 .safetensors replacing the folder's")
    ap.add_argument("--stage2-checkpoint", default=None, help="exported stage-2 .safetensors replacing the folder's")
    ap.add_argument("--lora", action="append", default=[], help="adapter file of a LoRA fine-tune (python -m "
                    "musicflow_jax.export); repeat for one per stage")
    ap.add_argument("--lora-scale", default=None, help="adapter strength, S or S1,S2 per --lora (default 1; 0 = the "
                    "base model)")
    ap.add_argument("--mode", choices=("generate", "continue", "infill", "restyle"), default=None,
                    help="default: generate, or continue when --prompt-audio is given")
    ap.add_argument("--prompt-audio", default=None, help="audio file for continue/infill/restyle")
    ap.add_argument("--regions", default=None, help="infill regions in seconds, START-END[,START-END...]")
    ap.add_argument("--overlap", type=float, default=0.5, help="long-form window overlap (fraction of a window)")
    ap.add_argument("--turbo", action="store_true", help="the model folder's few-step students (turbo/) as the "
                    "stages: their own sampler (2 average-velocity jumps per window, no CFG batch)")
    ap.add_argument("--draft", action="store_true", help="quick draft: the folder's few-step students, else 4 midpoint "
                    "steps per stage (unless --steps/--solver say otherwise); writes <out>.draft.npz beside each WAV "
                    "for --refine")
    ap.add_argument("--refine", default=None, metavar="DRAFT.npz", help="re-run stage 2 of a --draft clip at full "
                    "quality, keeping its semantic stream (text and seed: the draft's unless --text/--seed)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="the flow stages' compute dtype "
                    "(default: as trained, float32; bfloat16 is for GPUs/TPUs)")
    ap.add_argument("--device", default=None, help="cpu, gpu, tpu or gpu:N (default: JAX's default device)")
    ap.add_argument("--no-spectrogram", action="store_true", help="do not write the PNG beside each WAV")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _pair(value: str | None, cast: Any, name: str) -> tuple[Any, Any]:
    if value is None:
        return None, None
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) not in (1, 2) or not all(parts):
        raise GenerateError(f"--{name} {value!r}: give one value or two separated by a comma (stage 1, stage 2)")
    try:
        vals = [cast(p) for p in parts]
    except ValueError:
        raise GenerateError(f"--{name} {value!r}: expected {cast.__name__} values, e.g. --{name} "
                            f"{'16,8' if cast is int else '3,2' if cast is float else 'midpoint,euler'}") from None
    return (vals[0], vals[-1])


def stage_settings(mf: Any, steps: str | None, solver: str | None, cfg: str | None, draft: bool = False,
                   temperature: str | None = None) -> tuple[StageSettings, StageSettings]:
    """Per-stage settings: the flags where given, else the stage's defaults (a draft's with `draft`)."""
    st, so, cf = _pair(steps, int, "steps"), _pair(solver, str, "solver"), _pair(cfg, float, "cfg")
    te = _pair(temperature, float, "temperature")
    out = []
    stages = mf.draft_stages if draft else mf.stages
    for i, base in enumerate(mf.draft_settings(st) if draft else st.settings for st in stages):
        out.append(base.overridden(steps=st[i], solver=so[i], cfg_scale=cf[i], temperature=te[i]))
    return out[0], out[1]


def lora_scales(value: str | None, n: int) -> list[float]:
    """--lora-scale "S" or "S1,S2" -> the API's list (one per --lora file; the API checks them)."""
    if value is None:
        return [1.0] * n
    if not n:
        raise GenerateError("--lora-scale goes with --lora FILE")
    try:
        vals = [float(v) for v in str(value).split(",")]
    except ValueError:
        raise GenerateError(f"--lora-scale {value!r}: expected numbers, e.g. --lora-scale 0.7") from None
    return check_lora_scales(vals * n if len(vals) == 1 else vals, n)


def _int_field(value: Any) -> int:
    """An integer from JSON: int or an integer string; bools and fractional numbers are refused."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError


def read_prompts(path: str, default_duration: str | None, default_seed: int) -> list[dict[str, Any]]:
    """Prompts file -> [{"text", "duration", "seed", "out", "where"}]; errors name the line. "out" must be a relative
    .wav path without "..": it is placed under --out's folder."""
    p = Path(path)
    if not p.is_file():
        raise GenerateError(f"--prompts-file {p} does not exist: give a text file with one prompt per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GenerateError(f"--prompts-file {p} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        where = f"{p}:{n}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.lstrip().startswith("{"):
            out.append({"text": line.strip(), "duration": default_duration, "seed": default_seed, "out": None,
                        "where": where})
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenerateError(f"{where}: invalid JSON ({e.msg}); write {{\"text\": \"...\"}} per line") from None
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise GenerateError(f"{where}: a JSON prompt needs a \"text\" string")
        try:
            seed = _int_field(d.get("seed", default_seed))
        except ValueError:
            raise GenerateError(f"{where}: \"seed\" must be an integer, got {d['seed']!r}") from None
        duration = d.get("duration", default_duration)
        if isinstance(duration, bool) or not isinstance(duration, (int, float, str, type(None))):
            raise GenerateError(f"{where}: \"duration\" must be a number of seconds, got {duration!r}")
        o = d.get("out")
        if o is not None:
            if not isinstance(o, str) or not o.strip() or "\x00" in o:
                raise GenerateError(f"{where}: \"out\" must be a file path string (no NUL byte), got {o!r}")
            rel = Path(o)
            if rel.is_absolute() or ".." in rel.parts or rel.suffix.lower() != ".wav":
                raise GenerateError(f"{where}: \"out\" {o!r} must be a relative .wav path without '..' (it is "
                                    "written under --out's folder), e.g. \"organ.wav\"")
        out.append({"text": d["text"], "duration": duration, "seed": seed, "out": o, "where": where})
    if not out:
        raise GenerateError(f"--prompts-file {p} has no prompts: write one description per line")
    return out


def write_outputs(g: Generation, outs: list[Path], spectrogram: bool, extra: dict[str, Any]) -> list[Path]:
    for i, out in enumerate(outs):
        write_wav(out, g.audio[i], g.sample_rate, {**g.metadata(i), **extra})
        if spectrogram:
            spectrogram_png(out.with_suffix(".png"), g.audio[i], g.sample_rate, g.texts[i])
    return outs


def out_paths(base: str, jobs: list[dict[str, Any]]) -> list[Path]:
    """One WAV path per job: --out for a single job, else out_<i>.wav beside it; a prompts file's "out" is relative
    to --out's folder. Refuses duplicates, a folder as --out and an unwritable folder before anything is generated."""
    b = Path(base)
    if b.is_dir():
        raise GenerateError(f"--out {b} is a folder: give a file path, e.g. --out {b / 'music.wav'}")
    if b.exists() and not b.is_file():
        raise GenerateError(f"--out {b} is not a regular file (a device, pipe or socket): give a .wav file path")
    if b.suffix.lower() not in (".wav", ""):
        raise GenerateError(f"--out {b}: the output is WAV; use a .wav path")
    b = b if b.suffix else b.with_suffix(".wav")
    if len(jobs) == 1 and not jobs[0].get("out"):
        outs = [b]
    else:
        outs = [b.parent / j["out"] if j.get("out") else b.with_name(f"{b.stem}_{i}.wav") for i, j in enumerate(jobs)]
    seen: dict[Path, int] = {}
    inside = os.path.realpath(b.parent)
    for i, o in enumerate(outs):
        where = jobs[i].get("where") or f"prompt {i + 1}"
        if jobs[i].get("out") and os.path.commonpath([inside, os.path.realpath(o)]) != inside:
            raise GenerateError(f"{where}: \"out\" {jobs[i]['out']!r} leads outside --out's folder {b.parent} through "
                                f"a symbolic link (to {os.path.realpath(o)}): name a file inside it")
        if o.is_dir():
            raise GenerateError(f"output {o} is a folder: give a file name ending in .wav")
        if o.exists() and not o.is_file():
            raise GenerateError(f"{where}: output {o} is not a regular file: give a file name ending in .wav")
        key = Path(os.path.abspath(o))
        if key in seen:
            raise GenerateError(f"{where}: output {o} is also prompt {seen[key] + 1}'s: give each prompt its own "
                                "\"out\"")
        seen[key] = i
    atomic_io.check_can_create(b, "--out")  # a file on the path, permissions, a read-only file system, /proc
    return outs


def run(args: argparse.Namespace) -> list[Path]:
    if args.refine is not None:
        return _refine(args)
    if args.prompts_file and args.text:
        raise GenerateError("give either --text or --prompts-file, not both")
    if not args.prompts_file and not args.text:
        raise GenerateError("no text given: pass --text 'a description of the music' or --prompts-file FILE")
    mode = args.mode or ("continue" if args.prompt_audio else "generate")
    fixed_length = mode in ("infill", "restyle")  # the result has the prompt's length
    if fixed_length and args.duration is not None:
        raise GenerateError(f"--mode {mode} keeps the prompt's length: drop --duration")
    duration = None if fixed_length else (args.duration if args.duration is not None else "10")
    seed = check_seed(0 if args.seed is None else args.seed)
    jobs = (read_prompts(args.prompts_file, duration, seed) if args.prompts_file else
            [{"text": t, "duration": duration, "seed": seed, "out": None} for t in args.text])
    check_texts([j["text"] for j in jobs])
    if mode != "generate" and not args.prompt_audio:
        raise GenerateError(f"--mode {mode} needs --prompt-audio FILE")
    if mode == "generate" and args.prompt_audio:
        raise GenerateError("--prompt-audio is only used by --mode continue|infill|restyle")
    if (mode == "infill") != (args.regions is not None):
        raise GenerateError("--regions goes with --mode infill (and infill needs --regions START-END[,...])")
    for j in jobs:
        where = j.get("where")
        if fixed_length and j["duration"] is not None:
            raise GenerateError(f"{where}: --mode {mode} keeps the prompt's length: drop \"duration\"")
        if not fixed_length:
            try:
                j["duration"] = check_duration(j["duration"])
            except GenerateError as e:
                if where:
                    raise GenerateError(f"{where}: \"duration\"{str(e)[len('duration'):]}") from None
                raise
        if where:
            check_seed(j["seed"], f"{where}: \"seed\"")
    if args.batch < 1:
        raise GenerateError(f"--batch {args.batch} must be >= 1")
    regions = parse_regions(args.regions) if mode == "infill" else None
    outs = out_paths(args.out, jobs)  # refused before any model is loaded or anything generated
    if args.draft and mode != "generate":
        raise GenerateError(f"--draft is for text-to-music (--mode generate), not --mode {mode}")
    mf = _load(args)
    s1, s2 = stage_settings(mf, args.steps, args.solver, args.cfg, draft=args.draft, temperature=args.temperature)
    prompt = mf.read_prompt(args.prompt_audio) if args.prompt_audio else None
    ran = mf.draft_stages if args.draft else mf.stages
    extra = {"config_hash": "+".join(config_hash(st.cfg) for st in ran), "model": str(mf.folder),
             "steps": [s1.steps, s2.steps], "solver": [s1.solver, s2.solver], "cfg": [s1.cfg_scale, s2.cfg_scale],
             "temperature": [s1.temperature, s2.temperature]}
    if args.lora:
        extra["lora"] = [str(p) for p in args.lora]
        extra["lora_scale"] = lora_scales(args.lora_scale, len(args.lora))
    groups: dict[tuple[Any, int], list[int]] = {}
    for i, j in enumerate(jobs):  # batch prompts that share duration (infill/restyle: the prompt's) and seed
        groups.setdefault((j["duration"] if mode in ("generate", "continue") else None, j["seed"]), []).append(i)
    written = []
    kw = dict(stage1=s1, stage2=s2, overlap=args.overlap, progress=not args.quiet)
    for (duration, seed), idx in groups.items():
        for k in range(0, len(idx), args.batch):
            part = idx[k: k + args.batch]
            texts = [jobs[i]["text"] for i in part]
            if mode == "generate":
                g = mf.generate(texts, duration, seed=seed, draft=args.draft, **kw)
            elif mode == "continue":
                g = mf.continue_(texts, prompt, duration, seed=seed, **kw)
            elif mode == "infill":
                g = mf.infill(texts, prompt, regions, seed=seed, **kw)
            else:
                g = mf.restyle(texts, prompt, seed=seed, stage2=s2, overlap=args.overlap, progress=not args.quiet)
            written += write_outputs(g, [outs[i] for i in part], not args.no_spectrogram, extra)
            if args.draft:
                for row, i in enumerate(part):
                    g.save_draft(row, draft_path(outs[i]))
            if not args.quiet:
                print(f"{len(part)} x {g.audio.shape[-1] / g.sample_rate:.2f} s in {g.seconds:.1f} s "
                      f"(NFE {g.nfe['stage1']}+{g.nfe['stage2']}): {', '.join(str(outs[i]) for i in part)}",
                      file=sys.stderr)
    return written


def draft_path(wav: Path) -> Path:
    """Where --draft puts a clip's draft file: beside the WAV, music.wav -> music.draft.npz."""
    return wav.with_suffix(".draft.npz")


def _load(args: argparse.Namespace) -> Any:
    return MusicFlow.load(args.checkpoint, stage1=args.stage1_checkpoint, stage2=args.stage2_checkpoint,
                          lora=args.lora, lora_scale=lora_scales(args.lora_scale, len(args.lora)), dtype=args.dtype,
                          device=args.device, turbo=args.turbo)


def _refine(args: argparse.Namespace) -> list[Path]:
    """--refine DRAFT.npz: stage 2 of the draft's clip at full quality (settings: --steps/--solver/--cfg for stage 2
    or the stage's defaults), written to --out."""
    for flag, value in (("--prompts-file", args.prompts_file), ("--prompt-audio", args.prompt_audio),
                        ("--duration", args.duration), ("--mode", args.mode), ("--regions", args.regions)):
        if value is not None:
            raise GenerateError(f"{flag} does not go with --refine: a refined clip keeps its draft's length and "
                                "semantic stream")
    if args.draft:
        raise GenerateError("--draft and --refine exclude each other: draft first, then refine the .draft.npz")
    if len(args.text) > 1:
        raise GenerateError("--refine takes one --text (the draft is one clip)")
    try:
        draft = read_draft(args.refine)
    except GenerationFileError as e:
        raise GenerateError(f"--refine: {e}") from None
    outs = out_paths(args.out, [{"out": None}])
    mf = _load(args)
    _, s2 = stage_settings(mf, args.steps, args.solver, args.cfg, temperature=args.temperature)
    seed = draft.seed if args.seed is None else check_seed(args.seed)
    g = mf.refine(draft, args.text or None, seed=seed, stage2=s2, overlap=args.overlap, progress=not args.quiet)
    extra = {"config_hash": "+".join(config_hash(st.cfg) for st in mf.stages), "model": str(mf.folder),
             "draft": str(args.refine)}
    if not args.quiet:
        print(f"refined {g.duration:.2f} s in {g.seconds:.1f} s (NFE {g.nfe['stage2']}): {outs[0]}", file=sys.stderr)
    return write_outputs(g, outs, not args.no_spectrogram, extra)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _common.enable_compile_cache()

    def body() -> None:
        for path in run(args):
            print(path)

    return _common.run(body, debug=args.debug, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(main())
