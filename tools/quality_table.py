"""The quality table: the paper's ablations in miniature for one model folder, each row one
`python -m musicflow_jax.evaluate --checkpoint ...` run (musicflow_jax.evaluate.model) on the same manifest.

Rows (ROWS): real halves; backend ceiling (encode -> decode); text-to-music 4 s and 10 s at the stages' default
settings; continuation (2 s real prompt -> 6 s, the generated 4 s evaluated); NFE 4 / 8 / 16 / 32 per stage
(midpoint solver: steps 2 / 4 / 8 / 16); CFG 1 / 3 / 5 (4 s); real halves of 10-s clips (the 10-s row's floor);
infilling ([2, 4) s of a 6-s real clip regenerated); the 8-s rows of issue 12's targets (real halves, ceiling,
text-to-music, continuation 4 s -> 8 s with the continuation's key against the prompt's and its pitch-class profile
against the true continuation's and another piece's, one-sided paired Wilcoxon p; the held-out wordings; text-to-music
at temperature 1). FD on the model's own backend features in every row (`--features model`; VGGish / PANNs / AST /
CLAP when their local weights are given); the same-piece rows (ceiling, continuation, infilling) also get chroma
similarity / onset F-measure against the score and the seam score. Each row's results.json lands in `<out>/<row>/`;
a rerun skips rows that already have one, so rows can be run in several sittings (`--rows a,b`). `<out>/table.md` and
`table.json` collect the rows found.

    python tools/quality_table.py --manifest /tmp/heldout/manifest.jsonl --out eval/bundled --n 32
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from musicflow_jax.evaluate.model import EvalSpec

ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "real_halves": ("real halves (clips [0,n) vs [n,2n))", {"mode": "halves"}),
    "ceiling": ("backend ceiling (encode -> decode)", {"mode": "ceiling"}),
    "t2m_4s": ("text-to-music 4 s (defaults)", {}),
    "t2m_4s_paraphrase": ("text-to-music 4 s, held-out wordings", {"captions": "heldout"}),
    "t2m_10s": ("text-to-music 10 s (defaults)", {"duration": 10.0}),
    "real_halves_10s": ("real halves, 10 s clips", {"mode": "halves", "duration": 10.0}),
    "continue": ("continuation 2 s prompt -> 6 s", {"mode": "continue", "duration": 6.0, "prompt_seconds": 2.0}),
    "infill": ("infilling [2, 4) s of 6 s", {"mode": "infill", "duration": 6.0, "prompt_seconds": 2.0,
                                             "infill_seconds": 2.0}),
    "nfe4": ("NFE 4 per stage (midpoint x2)", {"steps": (2, 2), "solver": "midpoint"}),
    "nfe8": ("NFE 8 per stage (midpoint x4)", {"steps": (4, 4), "solver": "midpoint"}),
    "nfe16": ("NFE 16 per stage (midpoint x8)", {"steps": (8, 8), "solver": "midpoint"}),
    "nfe32": ("NFE 32 per stage (midpoint x16)", {"steps": (16, 16), "solver": "midpoint"}),
    "cfg1": ("CFG 1", {"cfg": (1.0, 1.0)}),
    "cfg3": ("CFG 3", {"cfg": (3.0, 3.0)}),
    "cfg5": ("CFG 5", {"cfg": (5.0, 5.0)}),
    # issue 12's targets: 8-s clips
    "real_halves_8s": ("real halves, 8 s clips", {"mode": "halves", "duration": 8.0}),
    "ceiling_8s": ("backend ceiling, 8 s", {"mode": "ceiling", "duration": 8.0}),
    "t2m_8s": ("text-to-music 8 s (defaults)", {"duration": 8.0}),
    # issue 24: the same captions' facts in wordings no training caption uses (musicflow_jax/data/captions.py)
    "t2m_8s_paraphrase": ("text-to-music 8 s, held-out wordings", {"duration": 8.0, "captions": "heldout"}),
    "continue_4to8": ("continuation 4 s prompt -> 8 s", {"mode": "continue", "duration": 8.0,
                                                         "prompt_seconds": 4.0}),
    # the starting noise at unit scale in both stages (sample.temperature = 1, as trained): beside a model whose
    # stages sample at a lower temperature, what it buys
    "t2m_8s_temperature1": ("text-to-music 8 s, temperature 1", {"duration": 8.0, "temperature": (1.0, 1.0)}),
    # draft then refine (issue 15): a draft is both stages at pipeline.DRAFT_STEPS midpoint steps; refining it
    # redoes stage 2 at its defaults with the same seed and rows, i.e. exactly stage 1 at 4 steps + stage 2 at 16
    "draft_8s": ("draft 8 s (midpoint 4 + 4)", {"duration": 8.0, "steps": (4, 4), "solver": "midpoint"}),
    "refine_8s": ("draft refined 8 s (midpoint 4 + 16)", {"duration": 8.0, "steps": (4, 16), "solver": "midpoint"}),
}
COLUMNS = ("row", "n", "s/clip", "key exact", "key MIREX", "stage-1 stream key exact / MIREX (real)",
           "tempo 4%", "note presence", "onsets/s", "FD proxy",
           "FD features (sem. / ac.)", "instrument acc.", "NFE s1/s2", "gen. wall s", "eval wall s")
SAME_PIECE_COLUMNS = ("row", "n", "chroma vs notes (real)", "chroma vs real", "onset F vs score (real)",
                      "seam (real)", "key = prompt's (real)", "profile vs real / other (p)")


def row_cells(name: str, res: dict[str, Any]) -> list[str]:
    g, run = res["generated"], res["run"]

    def f(v: Any, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    nfe = run["nfe"]
    if run.get("same_run_as"):
        name += f" (= {ROWS[run['same_run_as']][0]})"
    feats = res.get("embeddings", {}).get("features")
    s1 = res.get("stage1_stream")
    s1_cell = (f"{f(s1['generated']['key_exact'])} / {f(s1['generated']['key_mirex'])} "
               f"({f(s1['real']['key_exact'])} / {f(s1['real']['key_mirex'])})") if s1 else "-"
    return [name, str(g["n"]), f"{run['audio_seconds_per_clip']:g}", f(g["key_exact"]), f(g["key_mirex"]), s1_cell,
            f(g["tempo"]["within_4pct"] if g["tempo"] else None), f(g["note_presence"]), f(g["onsets_per_second"], 2),
            f(res["fd_proxy"], 1), f"{f(feats['fd_semantic'], 2)} / {f(feats['fd_acoustic'], 1)}" if feats else "-",
            f(res["instrument_accuracy"]),
            f"{nfe['stage1']}/{nfe['stage2']}" if nfe else "-", f(run["generation_seconds"], 1),
            f(run["evaluation_seconds"], 1)]


def same_piece_cells(name: str, res: dict[str, Any]) -> list[str] | None:
    """The alignment scores of a continue / infill / ceiling row (None for other rows)."""
    al = res.get("alignment")
    if not al:
        return None

    def f(key: str) -> str:
        return "-" if al.get(key) is None else f"{al[key]:.3f}"

    cont = "pc_vs_real" in al
    p = al.get("pc_real_gt_other_p")
    return [name, str(al["n"]), f"{f('chroma_vs_notes')} ({f('real_chroma_vs_notes')})", f("chroma_vs_real"),
            f"{f('onset_f')} ({f('real_onset_f')})", f"{f('seam')} ({f('real_seam')})" if "seam" in al else "-",
            f"{f('key_matches_prompt')} ({f('real_key_matches_prompt')})" if cont else "-",
            f"{f('pc_vs_real')} / {f('pc_vs_other')} ({'-' if p is None else f'{p:.2g}'})" if cont else "-"]


def table(out: Path) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    same = ["| " + " | ".join(SAME_PIECE_COLUMNS) + " |", "|" + "---|" * len(SAME_PIECE_COLUMNS)]
    rows = {}
    for key, (name, _) in ROWS.items():
        p = out / key / "results.json"
        if p.is_file():
            res = json.loads(p.read_text())
            rows[key] = res
            lines.append("| " + " | ".join(row_cells(name, res)) + " |")
            cells = same_piece_cells(name, res)
            if cells:
                same.append("| " + " | ".join(cells) + " |")
    if len(same) > 2:
        lines += ["", "Same-piece rows (the real clip's own score in brackets: its ceiling):", "", *same]
    (out / "table.json").write_text(json.dumps({k: {kk: v for kk, v in r.items() if kk != "clips"}
                                                for k, r in rows.items()}, indent=1) + "\n")
    return "\n".join(lines) + "\n"


def _explicit(spec: EvalSpec, checkpoint: str) -> EvalSpec:
    """The spec with each stage's default steps / CFG / temperature / solver filled in from the model folder's stage
    configs."""
    import dataclasses

    from musicflow_jax.inference.checks import StageSettings
    from musicflow_jax.inference.model_folder import BUNDLED
    from musicflow_jax.models.stage_file import load_stage

    folder = BUNDLED if checkpoint == "bundled" else Path(checkpoint)
    cfgs = [load_stage(folder / f"stage{i}.safetensors", stream)[0] for i, stream in ((1, "semantic"), (2, "acoustic"))]
    st = [StageSettings.from_config(c).overridden(steps=s, solver=spec.solver or None, cfg_scale=v, temperature=t)
          for c, s, v, t in zip(cfgs, spec.steps, spec.cfg, spec.temperature, strict=True)]
    if len({x.solver for x in st}) > 1:  # one --solver flag covers both stages: keep the defaults implicit
        return spec
    return dataclasses.replace(spec, solver=st[0].solver, steps=tuple(x.steps for x in st),
                               cfg=tuple(x.cfg_scale for x in st), temperature=tuple(x.temperature for x in st))


def main(argv: list[str] | None = None) -> int:
    from musicflow_jax.cli.evaluate import main as evaluate_main

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="bundled")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--row-n", default="", help="per-row clip counts where CPU time is short, e.g. t2m_10s=16")
    ap.add_argument("--features", default="model", help="FD on this backend's features ('model': the model's own; "
                    "'' for none)")
    for flag in ("--vggish", "--panns", "--ast", "--clap", "--classifier"):
        ap.add_argument(flag, default=None, help="passed to python -m musicflow_jax.evaluate")
    a = ap.parse_args(argv)
    out = Path(a.out)
    row_n = {k: int(v) for k, v in (x.split("=") for x in a.row_n.split(",") if x)}
    done: dict[EvalSpec, str] = {}
    for key in [r.strip() for r in a.rows.split(",") if r.strip()]:
        if key not in ROWS:
            print(f"error: --rows {key!r} is not one of {', '.join(ROWS)}", file=sys.stderr)
            return 2
        spec = EvalSpec(n=row_n.get(key, a.n), seed=a.seed, **ROWS[key][1])
        if spec.mode == "generate":  # the stages' defaults spelled out: rows with equal settings are one run
            spec = _explicit(spec, a.checkpoint)
        if (out / key / "results.json").is_file():
            done[spec] = key
            continue
        if spec in done:  # same settings as a row already run: the same clips, so the same results
            (out / key).mkdir(parents=True, exist_ok=True)
            res = json.loads((out / done[spec] / "results.json").read_text())
            res["run"]["same_run_as"] = done[spec]
            (out / key / "results.json").write_text(json.dumps(res, indent=1) + "\n")
            continue
        argv_row = ["--checkpoint", a.checkpoint, "--manifest", a.manifest, "--out", str(out / key), "--quiet",
                    "--cache", str(out / "cache"),
                    "--mode", spec.mode, "--n", str(spec.n), "--seed", str(spec.seed), "--duration",
                    str(spec.duration), "--prompt-seconds", str(spec.prompt_seconds), "--infill-seconds",
                    str(spec.infill_seconds)]
        for flag in ("features", "vggish", "panns", "ast", "clap", "classifier"):
            if getattr(a, flag):
                argv_row += [f"--{flag}", getattr(a, flag)]
        for flag, vals in (("--steps", spec.steps), ("--cfg", spec.cfg), ("--temperature", spec.temperature)):
            for i, v in enumerate(vals, 1):
                if v is not None:
                    argv_row += [f"{flag}{i}", str(v)]
        if spec.solver:
            argv_row += ["--solver", spec.solver]
        if spec.captions != "as_written":
            argv_row += ["--captions", spec.captions]
        print(" ".join(["python -m musicflow_jax.evaluate", *argv_row]), flush=True)
        rc = evaluate_main(argv_row)
        if rc:
            return rc
        done[spec] = key
        print(table(out), flush=True)
    md = table(out)
    (out / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
