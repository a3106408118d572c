"""The tokenizer travels with a converted T5 folder: spiece.model -> sentencepiece, tokenizer.json -> `tokenizers`,
the embedded byte-level T5 (and ByT5) -> bytes; a converted real T5 without a tokenizer file is refused instead of
being fed UTF-8 bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicflow_jax.convert.t5 import convert_t5
from musicflow_jax.core.config import TextConfig
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.encoders.tokenizer import (
    BYTE_LEVEL_SOURCE,
    ByteTokenizer,
    FastTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    load_tokenizer,
)
from musicflow_jax.testing.tiny_models import save_tiny_t5

ROOT = Path(__file__).resolve().parents[3]
CAPTIONS = ["a calm piano melody", "fast techno with heavy drums", "ambient synth pads", "jazz trio with upright bass",
            "orchestral strings, slow and sad"]


def _real_t5_without_tokenizer(folder: Path) -> Path:
    """An HF T5 folder whose tokenizer file went missing (a real T5 is not byte-level)."""
    src = save_tiny_t5(folder, seed=4)
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    return src


def test_converted_folder_without_tokenizer_is_refused(tmp_path):
    src = _real_t5_without_tokenizer(tmp_path / "hf")
    with pytest.raises(TokenizerError, match="has no tokenizer"):  # the converter refuses at once
        convert_t5(src, tmp_path / "flax")
    out = tmp_path / "flax"  # converted anyway (weights written before the check): a folder without a tokenizer
    assert (out / "model.safetensors").is_file()
    assert not (out / "spiece.model").exists() and not (out / "tokenizer.json").exists()
    want = (f"T5 folder {out} has no tokenizer (spiece.model or tokenizer.json): copy it from the original HF "
            f"checkpoint folder into {out} (python -m musicflow_jax.convert t5 does this)")
    with pytest.raises(TokenizerError) as e:
        TextEncoder.load(TextConfig(checkpoint=str(out), max_len=16, dim=32))
    assert str(e.value) == want
    with pytest.raises(TokenizerError):  # the data pipeline and training samples tokenize through this too
        load_tokenizer(out)
    with pytest.raises(TokenizerError, match=r"T5 folder .*nowhere does not exist: check text.checkpoint"):
        load_tokenizer(tmp_path / "nowhere")


def test_convert_cli_refuses_a_t5_without_tokenizer(tmp_path):
    src = _real_t5_without_tokenizer(tmp_path / "hf")
    proc = subprocess.run([sys.executable, "-m", "musicflow_jax.convert", "t5", str(src), str(tmp_path / "flax")],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: T5 folder {tmp_path / 'flax'} has no tokenizer (spiece.model or tokenizer.json): copy it from the "
        f"original HF checkpoint folder into {tmp_path / 'flax'} (python -m musicflow_jax.convert t5 does this)"]


def _train_spiece(tmp_path: Path) -> Path:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40, pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, model_type="unigram")
    return tmp_path / "sp.model"


def test_spiece_model_is_copied_and_used(tmp_path):
    src = _real_t5_without_tokenizer(tmp_path / "hf")
    _train_spiece(tmp_path).rename(src / "spiece.model")
    out = convert_t5(src, tmp_path / "flax")
    assert (out / "spiece.model").read_bytes() == (src / "spiece.model").read_bytes()
    enc = TextEncoder.load(TextConfig(checkpoint=str(out), max_len=32, dim=32))
    assert isinstance(enc.tokenizer, SentencePieceTokenizer)
    import sentencepiece as spm

    want = spm.SentencePieceProcessor(model_file=str(out / "spiece.model")).encode("calm jazz piano") + [1]
    ids, mask = enc.tokenize(["calm jazz piano"])
    assert ids[0, : len(want)].tolist() == want and int(mask[0].sum()) == len(want)
    enc.save(tmp_path / "bundle")  # an exported model ships the tokenizer too
    assert (tmp_path / "bundle" / "spiece.model").read_bytes() == (src / "spiece.model").read_bytes()
    assert isinstance(TextEncoder.load(TextConfig(checkpoint=str(tmp_path / "bundle"), max_len=32, dim=32)).tokenizer,
                      SentencePieceTokenizer)


def test_tokenizer_json_is_copied_and_used(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "calm": 3, "jazz": 4, "piano": 5, "drums": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    src = _real_t5_without_tokenizer(tmp_path / "hf")
    tok.save(str(src / "tokenizer.json"))
    out = convert_t5(src, tmp_path / "flax")
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((src / "tokenizer.json").read_text())
    enc = TextEncoder.load(TextConfig(checkpoint=str(out), max_len=8, dim=32))
    assert isinstance(enc.tokenizer, FastTokenizer) and enc.tokenizer.vocab_size == 7
    ids, mask = enc.tokenize(["calm jazz piano", "loud drums"])
    assert ids.tolist() == [[3, 4, 5, 1, 0, 0, 0, 0], [2, 6, 1, 0, 0, 0, 0, 0]]
    assert mask.sum(1).tolist() == [4, 3]


def test_embedded_byte_level_save_load_and_resave(tmp_path):
    enc = TextEncoder.load(TextConfig(checkpoint="", max_len=16, dim=32), seed=3)
    first = enc.save(tmp_path / "te")
    assert json.loads((first / "config.json").read_text())["source"] == BYTE_LEVEL_SOURCE
    back = TextEncoder.load(TextConfig(checkpoint=str(first), max_len=16, dim=32))
    assert isinstance(back.tokenizer, ByteTokenizer)
    ids, mask = back.tokenize(["drums"])
    assert ids[0, :6].tolist() == [b + 3 for b in b"drums"] + [1]
    np.testing.assert_array_equal(np.asarray(back.encode(ids, mask)), np.asarray(enc.encode(ids, mask)))
    again = back.save(tmp_path / "te2")  # a bundle re-exported from a bundle stays byte-level
    assert json.loads((again / "config.json").read_text())["source"] == BYTE_LEVEL_SOURCE
    assert isinstance(TextEncoder.load(TextConfig(checkpoint=str(again), max_len=16, dim=32)).tokenizer, ByteTokenizer)


def test_byt5_folder_is_byte_level(tmp_path):
    out = convert_t5(save_tiny_t5(tmp_path / "hf"), tmp_path / "flax")  # declares ByT5Tokenizer
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "ByT5Tokenizer"
    assert isinstance(TextEncoder.load(TextConfig(checkpoint=str(out), max_len=16, dim=32)).tokenizer, ByteTokenizer)
