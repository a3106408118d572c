"""The web demo: `python -m musicflow_jax.app` (needs the optional extra: `pip install -e .[app]`).

A Gradio page over the Python API (pipeline.MusicFlow): text, duration, seed, N variations side by side (audio
players + spectrograms + downloads), the four modes (generate; continue, infill with regions, restyle from an
uploaded or recorded clip), sampling steps / solver / guidance per stage, and draft then refine: "Draft" runs both
stages at a few steps, "Refine" redoes stage 2 of the chosen variation at full quality with its semantic stream
kept. The model (the bundled one unless --checkpoint) is loaded once and shared by every request, one generation at
a time; durations share compiled executables through the length buckets (buckets.py) and the persistent
compilation cache. Bad input is a message in the page, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from musicflow_jax.generation import Generation
from musicflow_jax.pipeline import GenerateError, MusicFlow, StageSettings

MAX_VARIATIONS = 4
MODES = ("generate", "continue", "infill", "restyle")
EXIT_BAD_INPUT = 2
log = logging.getLogger("musicflow_jax.app")


class Studio:
    """What the page's requests share: the loaded cascade, a lock (one generation at a time: the model and the
    progress reporting are shared), and the folder every result is saved in."""

    def __init__(self, mf: MusicFlow, outdir: Path):
        self.mf, self.outdir = mf, Path(outdir)
        self.lock = threading.Lock()
        self._ids = itertools.count()

    def run(self, mode: str, text: str, duration: float, seed: float, variations: float, prompt: str | None,
            regions: str, settings: tuple[StageSettings, StageSettings], draft: bool) -> tuple[Generation, Path]:
        """One request -> (the generation, the folder it is saved in). Raises GenerateError for bad input."""
        from musicflow_jax.generate import parse_regions

        if mode not in MODES:
            raise GenerateError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        n = _int(variations, "variations")
        if not 1 <= n <= MAX_VARIATIONS:
            raise GenerateError(f"variations {variations}: choose 1 to {MAX_VARIATIONS}")
        texts, s1, s2 = [text] * n, *settings
        kw: dict[str, Any] = dict(seed=_int(seed, "seed"), progress=True)
        if mode == "generate":
            run = lambda: self.mf.generate(texts, duration, stage1=s1, stage2=s2, draft=draft, **kw)  # noqa: E731
        else:
            if draft:
                raise GenerateError("drafts are for text-to-music: choose the mode 'generate' (or press Generate)")
            if not prompt:
                raise GenerateError(f"mode {mode} needs a clip: upload or record one under 'Prompt audio'")
            audio = self.mf.read_prompt(prompt)
            if mode == "continue":
                run = lambda: self.mf.continue_(texts, audio, duration, stage1=s1, stage2=s2, **kw)  # noqa: E731
            elif mode == "infill":
                if not (regions or "").strip():
                    raise GenerateError("infill needs regions: seconds to regenerate, e.g. 1.0-2.5, 4-5")
                try:
                    regs = parse_regions(regions)
                except GenerateError as e:  # the CLI's wording, for the page
                    raise GenerateError(str(e).replace("--regions", "regions")) from None
                run = lambda: self.mf.infill(texts, audio, regs, stage1=s1, stage2=s2, **kw)  # noqa: E731
            else:
                run = lambda: self.mf.restyle(texts, audio, stage2=s2, **kw)  # noqa: E731
        with self.lock:
            g = run()
        return g, self.save(g, draft)

    def refine(self, g: Generation | None, which: float, settings: StageSettings) -> tuple[Generation, Path]:
        if g is None:
            raise GenerateError("nothing to refine yet: press Draft (or Generate) first")
        if g.mode not in ("draft", "generate", "refine"):  # (the API refuses them too, naming its parameter)
            raise GenerateError(f"the last result is a {g.mode}: refine works on Draft / Generate results")
        i = _int(which, "variation") - 1
        if not 0 <= i < len(g.texts):
            raise GenerateError(f"variation {which}: the last result has {len(g.texts)}; choose 1 to {len(g.texts)}")
        one = Generation(**{**g.__dict__, "audio": g.audio[i:i + 1], "semantic": g.semantic[i:i + 1],
                            "acoustic": g.acoustic[i:i + 1], "texts": g.texts[i:i + 1],
                            "rows": [g.rows[i] if g.rows else i]})
        with self.lock:
            r = self.mf.refine(one, stage2=settings, progress=True)
        return r, self.save(r, False)

    def save(self, g: Generation, draft: bool) -> Path:
        folder = self.outdir / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids):04d}-{g.mode}"
        g.save(folder, spectrograms=True)
        if draft:
            for i in range(len(g.texts)):
                g.save_draft(i, folder / f"{i:02d}.draft.npz")
        return folder


def _int(value: Any, name: str) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GenerateError(f"{name} {value!r} must be an integer") from None
    if not v.is_integer():
        raise GenerateError(f"{name} {value!r} must be an integer")
    return int(v)


def _settings(steps: float, solver: str, cfg: float, stage: str) -> StageSettings:
    return StageSettings(steps=_int(steps, f"{stage} steps"), solver=str(solver), cfg_scale=float(cfg))


def build_ui(studio: Studio, duration: float = 8.0, max_duration: float = 30.0) -> Any:
    """The Gradio Blocks of the page (elem_ids are what the browser test drives)."""
    import gradio as gr

    from musicflow_jax.sampling import SOLVERS

    st1, st2 = studio.mf.stages

    def outputs_of(g: Generation, folder: Path, status: str) -> list[Any]:
        wavs = sorted(folder.glob("*.wav"))
        downloads = sorted(str(p) for p in folder.iterdir() if p.suffix == ".wav" or p.name.endswith(".draft.npz"))
        items: list[Any] = [status, g, downloads]
        for i in range(MAX_VARIATIONS):
            there = i < len(wavs)
            items += [gr.update(value=str(wavs[i]) if there else None, visible=there,
                                label=f"{i + 1}: {g.texts[i][:60]}" if there else None),
                      gr.update(value=str(wavs[i].with_suffix(".png")) if there else None, visible=there)]
        return items

    def failed(message: str) -> list[Any]:
        return [f"**Error:** {message}"] + [gr.update()] * (2 + 2 * MAX_VARIATIONS)

    def handle(fn: Any, *args: Any) -> list[Any]:
        try:
            g, folder = fn(*args)
        except GenerateError as e:
            return failed(" ".join(str(e).split()))
        except Exception:  # noqa: BLE001 - the page gets one line; the server log the traceback
            log.exception("generation failed")
            return failed("the generation failed on the server (see its log); try other settings")
        what = {"draft": "Draft", "refine": "Refined"}.get(g.mode, g.mode.capitalize())
        nfe = "+".join(str(v) for v in g.nfe.values())
        return outputs_of(g, folder, f"{what}: {len(g.texts)} x {g.duration:.2f} s in {g.seconds:.1f} s (NFE {nfe}), "
                                     f"saved in `{folder}`")

    def generate_fn(draft: bool) -> Any:
        def fn(mode, text, dur, seed, n, prompt, regions, k1, so1, c1, k2, so2, c2,
               progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio injects the progress tracker
            def go() -> tuple[Generation, Path]:
                settings = (_settings(k1, so1, c1, "stage 1"), _settings(k2, so2, c2, "stage 2"))
                if draft:  # the draft's steps and solver for both stages; guidance as set
                    settings = tuple(dataclasses.replace(MusicFlow.draft_settings(st), cfg_scale=s.cfg_scale)
                                     for st, s in zip((st1, st2), settings))
                return studio.run(mode, text, dur, seed, n, prompt, regions, settings, draft)

            return handle(go)

        return fn

    def refine(g, which, k2, so2, c2, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        return handle(lambda: studio.refine(g, which, _settings(k2, so2, c2, "stage 2")))

    with gr.Blocks(title="MusicFlow (JAX)", analytics_enabled=False) as ui:
        gr.Markdown(f"## MusicFlow (JAX): text-to-music\nModel: `{studio.mf.folder}` - {st1.stream} stream at "
                    f"{st1.rate:g} Hz, {st2.stream} at {st2.rate:g} Hz, {studio.mf.sample_rate} Hz audio.")
        players: list[Any] = []
        with gr.Row():
            with gr.Column(scale=2):
                text = gr.Textbox(label="Describe the music", lines=2, elem_id="text",
                                  value="a calm Bach chorale played on a church organ")
                with gr.Row():
                    dur = gr.Slider(0.5, max_duration, value=duration, step=0.1, label="Duration (s)",
                                    elem_id="duration")
                    n = gr.Slider(1, MAX_VARIATIONS, value=2, step=1, label="Variations", elem_id="variations")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    mode = gr.Radio(list(MODES), value="generate", label="Mode", elem_id="mode")
                with gr.Accordion("Prompt clip (continue / infill / restyle)", open=False):
                    prompt = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Prompt audio",
                                      elem_id="prompt")
                    regions = gr.Textbox(label="Infill regions (s)", placeholder="1.0-2.5, 4-5", elem_id="regions")
                with gr.Accordion("Sampling per stage", open=False):
                    stage_inputs = []
                    for st in (st1, st2):
                        s = st.settings
                        with gr.Row():
                            stage_inputs += [
                                gr.Slider(1, 64, value=s.steps, step=1, label=f"{st.name} steps"),
                                gr.Dropdown(list(SOLVERS), value=s.solver, label=f"{st.name} solver"),
                                gr.Slider(0.0, 20.0, value=s.cfg_scale, step=0.5, label=f"{st.name} guidance")]
                with gr.Row():
                    go_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    draft_btn = gr.Button("Draft (fast)", elem_id="draft")
                with gr.Row():
                    which = gr.Number(value=1, precision=0, label="Variation to refine", elem_id="which")
                    refine_btn = gr.Button("Refine (stage 2 at full quality)", elem_id="refine")
                status = gr.Markdown("Ready.", elem_id="status")
            with gr.Column(scale=3):
                for r in range(0, MAX_VARIATIONS, 2):
                    with gr.Row():
                        for i in range(r, r + 2):
                            with gr.Column(min_width=240):
                                players += [
                                    gr.Audio(type="filepath", interactive=False, visible=False, elem_id=f"out-{i}"),
                                    gr.Image(type="filepath", interactive=False, visible=False, show_label=False,
                                             height=180, elem_id=f"spec-{i}")]
                files = gr.File(label="Download (WAV, drafts)", file_count="multiple", elem_id="files")
        last = gr.State(None)
        outs = [status, last, files, *players]
        common = [mode, text, dur, seed, n, prompt, regions, *stage_inputs]
        go_btn.click(generate_fn(False), common, outs)
        draft_btn.click(generate_fn(True), common, outs)
        refine_btn.click(refine, [last, which, *stage_inputs[3:]], outs)
    return ui


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m musicflow_jax.app", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--lora", action="append", default=[], help="adapter file of a LoRA fine-tune (repeatable)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="flow stages' compute dtype")
    ap.add_argument("--device", default=None, help="cpu, gpu, tpu or gpu:N")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true", help="a public gradio.live link (needs internet)")
    ap.add_argument("--outdir", default=None, help="where results are saved (default: a temporary folder)")
    ap.add_argument("--duration", type=float, default=8.0, help="the page's initial duration (s)")
    ap.add_argument("--max-duration", type=float, default=30.0, help="the duration slider's maximum (s)")
    args = ap.parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the web demo needs gradio: pip install -e '.[app]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    from musicflow_jax import compile_cache

    if not 0.5 <= args.duration <= args.max_duration:
        print(f"error: --duration {args.duration} must be within 0.5..--max-duration ({args.max_duration})",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    compile_cache.enable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        mf = MusicFlow.load(args.checkpoint, lora=args.lora, dtype=args.dtype, device=args.device, eval_progress=True)
    except GenerateError as e:
        from musicflow_jax.generate import cli_message

        print(f"error: {cli_message(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    outdir = Path(args.outdir) if args.outdir else Path(tempfile.mkdtemp(prefix="musicflow_app_"))
    outdir.mkdir(parents=True, exist_ok=True)
    ui = build_ui(Studio(mf, outdir), args.duration, args.max_duration)
    log.info("model %s loaded; results in %s", mf.folder, outdir)
    ui.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share,
                                                 allowed_paths=[str(outdir)], ssr_mode=False, show_error=False,
                                                 quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
