"""tools/quality_table.py (the script the model card's tables come from) on a tiny model: a generate row spelled
out from the model's stage defaults, the paraphrase row, a rerun that skips finished rows, and a bad --rows name
refused in one line. The script's main runs in this process (runpy), so the rows share one model compile."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np

from musicflow_jax.core.audio import write_wav
from musicflow_jax.data.captions import Facts, template_caption
from musicflow_jax.data.manifest import Entry, write_manifest
from musicflow_jax.testing.model_folders import make_model_folder, tone

ROOT = Path(__file__).resolve().parents[3]
SR = 24_000


def test_quality_table_rows(tmp_path: Path, capsys) -> None:
    main = runpy.run_path(str(ROOT / "tools" / "quality_table.py"), run_name="quality_table")["main"]
    model = make_model_folder(tmp_path / "model")
    entries = []
    for i, (key, inst) in enumerate([("C major", "a piano"), ("A minor", "a church organ"), ("G major", "a piano"),
                                     ("E minor", "a church organ"), ("F major", "a piano")]):
        facts = Facts("bach", "chorale", key, 80 + 10 * i, inst)
        path = write_wav(tmp_path / "audio" / f"c{i}.wav", tone(4.0, SR, (220.0 * 2 ** (i / 12), 330.0)), SR)
        entries.append(Entry(str(path), template_caption(facts), "test", 4.0, facts=facts))
    write_manifest(tmp_path / "m.jsonl", entries)
    out = tmp_path / "table"
    common = ["--checkpoint", str(model), "--manifest", str(tmp_path / "m.jsonl"), "--out", str(out), "--n", "2"]
    assert main([*common, "--rows", "t2m_4s,t2m_4s_paraphrase"]) == 0
    rows = json.loads((out / "table.json").read_text())
    assert set(rows) == {"t2m_4s", "t2m_4s_paraphrase"}
    # the tiny model's stage defaults spelled out (euler, 4 steps, CFG 2, temperature 1); the paraphrase row prompts
    # held-out wordings and is scored against the same captions
    spec = rows["t2m_4s"]["run"]["spec"]
    assert (spec["solver"], spec["steps"], spec["cfg"], spec["temperature"], spec["captions"]) == (
        "euler", [4, 4], [2.0, 2.0], [1.0, 1.0], "as_written")
    para, plain = (json.loads((out / row / "results.json").read_text()) for row in ("t2m_4s_paraphrase", "t2m_4s"))
    assert para["run"]["spec"]["captions"] == "heldout"
    assert [c["caption"] for c in para["clips"]] == [c["caption"] for c in plain["clips"]] == \
        [e.caption for e in entries[:2]]
    assert para["generated"]["key_n"] == 2 and para["stage1_stream"]["generated"]["key_n"] == 2
    table = (out / "table.md").read_text()
    assert "| text-to-music 4 s, held-out wordings |" in table and "| text-to-music 4 s (defaults) |" in table
    # a rerun skips rows that have results; an unknown row is one line, exit 2
    capsys.readouterr()
    assert main([*common, "--rows", "t2m_4s"]) == 0
    assert "python -m musicflow_jax.evaluate" not in capsys.readouterr().out
    assert main([*common, "--rows", "t2m_4s,nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rows 'nope' is not one of" in err
    assert np.isfinite(rows["t2m_4s"]["fd_proxy"])
