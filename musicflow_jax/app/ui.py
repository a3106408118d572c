"""The Gradio page of the web demo: text, duration, seed, N variations side by side (audio players + spectrograms +
downloads), the four modes (generate; continue, infill with regions, restyle from an uploaded or recorded clip),
sampling steps / solver / guidance per stage, and draft then refine: "Draft" runs both stages at a few steps (the
model's few-step students where it has them), "Refine" redoes stage 2 of the chosen variation at full quality with
its semantic stream kept. Bad input is a message in the page, never a traceback (the server log keeps tracebacks of
failures). gradio is imported when the page is built (the `app` extra). (No postponed annotations here: Gradio hands
its request to the parameters annotated gr.Request, which it must be able to resolve.)
"""

import logging
from pathlib import Path
from typing import Any

from musicflow_jax.app.studio import MAX_VARIATIONS, MODES, Studio, settings_of
from musicflow_jax.core.config import MAX_TEMPERATURE
from musicflow_jax.core.sampling import SOLVERS
from musicflow_jax.inference.checks import GenerateError
from musicflow_jax.inference.generation import Generation

log = logging.getLogger("musicflow_jax.app")


def build_ui(studio: Studio, duration: float = 8.0, max_duration: float = 30.0) -> Any:
    """The Gradio Blocks of the page (elem_ids are what the browser test drives)."""
    import gradio as gr

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
        return outputs_of(g, folder, f"{what}: {len(g.texts)} x {g.duration:.2f} s in {g.seconds:.1f} s (NFE {nfe})")

    def generate_fn(draft: bool) -> Any:
        def fn(mode, text, dur, seed, n, prompt, regions, k1, so1, c1, t1, k2, so2, c2, t2, request: gr.Request,
               progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio injects the request and progress tracker
            def go() -> tuple[Generation, Path]:
                settings = (settings_of(k1, so1, c1, t1, "stage 1"), settings_of(k2, so2, c2, t2, "stage 2"))
                if draft:
                    settings = studio.draft_settings(settings)
                return studio.run(mode, text, dur, seed, n, prompt, regions, settings, draft, _session(request))

            return handle(go)

        return fn

    def refine(g, which, k2, so2, c2, t2, request: gr.Request, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        return handle(lambda: studio.refine(g, which, settings_of(k2, so2, c2, t2, "stage 2"), _session(request)))

    def closed(request: gr.Request) -> None:  # the page was closed or reloaded: stop its requests
        if studio.cancel_session(_session(request)):
            log.info("session closed: its requests stop at their next window")

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
                                gr.Dropdown([x for x in SOLVERS if (x == "average") == st.cfg.model.interval],
                                            value=s.solver, label=f"{st.name} solver"),
                                gr.Slider(0.0, 20.0, value=s.cfg_scale, step=0.5, label=f"{st.name} guidance"),
                                gr.Slider(0.05, MAX_TEMPERATURE, value=s.temperature, step=0.05,
                                          label=f"{st.name} temperature")]
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
        go_btn.click(generate_fn(False), common, outs, api_name="generate")
        draft_btn.click(generate_fn(True), common, outs, api_name="draft")
        stage2_inputs = stage_inputs[len(stage_inputs) // 2:]  # the second row's controls
        refine_btn.click(refine, [last, which, *stage2_inputs], outs, api_name="refine")
        ui.unload(closed)
    return ui


def _session(request: Any) -> str:
    """The page session's id (Gradio's session hash; one per open page)."""
    return str(getattr(request, "session_hash", None) or "anonymous")
