"""Text tokenizers for the text encoders (T5, BERT): numpy in, numpy out, no torch.

`ByteTokenizer` is the embedded default (ByT5 convention: pad=0, eos=1, unk=2, byte b -> b+3),
needing no vocabulary file. A T5 folder carries its real tokenizer: `spiece.model` (sentencepiece) or
`tokenizer.json` (HF fast tokenizer, read with the `tokenizers` library); a BERT-family folder (e.g.
all-MiniLM-L6-v2) its `tokenizer.json`, read by `BertWordPieceTokenizer` ([CLS] ... [SEP]). A folder without
either is byte-level only when it says so (the embedded byte-level T5 saved by TextEncoder.save, or a ByT5
checkpoint's `tokenizer_config.json`); any other folder is refused rather than silently tokenized as bytes
(see `load_tokenizer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from musicflow_jax.errors import MusicFlowError

PAD_ID, EOS_ID, UNK_ID, BYTE_OFFSET = 0, 1, 2, 3
BYTE_LEVEL_SOURCE = "embedded byte-level T5"  # the "source" TextEncoder.save records for the embedded T5
# what travels with a text-encoder folder (T5: spiece.model or tokenizer.json; BERT: tokenizer.json + vocab.txt)
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class TokenizerError(MusicFlowError):
    """A converted T5 folder without a usable tokenizer, with a one-line message naming the folder and the fix."""


class Tokenizer(Protocol):
    vocab_size: int

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids_bl int32, mask_bl bool): right-padded, EOS-terminated, truncated to max_len."""
        ...


def _pack(rows: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    ids_bl = np.full((len(rows), max_len), PAD_ID, np.int32)
    mask_bl = np.zeros((len(rows), max_len), bool)
    for i, row in enumerate(rows):
        row = row[: max_len - 1] + [EOS_ID]
        ids_bl[i, : len(row)] = row
        mask_bl[i, : len(row)] = True
    return ids_bl, mask_bl


def _check_texts(texts: Sequence[str]) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"caption {i} must be a str, got {type(t).__name__}: {t!r}")


class ByteTokenizer:
    """UTF-8 bytes as tokens (ByT5 layout). vocab_size 259 (models may use a larger padded table)."""

    vocab_size = 256 + BYTE_OFFSET

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        _check_texts(texts)
        return _pack([[b + BYTE_OFFSET for b in t.encode("utf-8")] for t in texts], max_len)


class SentencePieceTokenizer:
    """The real T5 tokenizer from a checkpoint folder's `spiece.model` (no HF hub, no torch)."""

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size = int(self._sp.get_piece_size())

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        _check_texts(texts)
        return _pack([list(self._sp.encode(t)) for t in texts], max_len)


class FastTokenizer:
    """The tokenizer of a checkpoint folder's `tokenizer.json` (HF fast tokenizer; `tokenizers`, no transformers)."""

    def __init__(self, tokenizer_file: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(tokenizer_file))
        self.vocab_size = int(self._tok.get_vocab_size())

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        _check_texts(texts)  # EOS is appended by _pack, not by the tokenizer's post-processor
        return _pack([list(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)], max_len)


class BertWordPieceTokenizer:
    """A BERT-family folder's `tokenizer.json` (WordPiece, lower-casing normaliser; `tokenizers`, no transformers):
    `[CLS] tokens [SEP]`, right-padded with the pad id, truncated to max_len keeping `[SEP]` - what transformers'
    BertTokenizerFast gives with truncation=True, padding="max_length". The file's own padding/truncation
    settings are switched off (ours are max_len's)."""

    def __init__(self, tokenizer_file: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(tokenizer_file))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.vocab_size = int(self._tok.get_vocab_size())
        ids = {name: self._tok.token_to_id(name) for name in ("[CLS]", "[SEP]", "[PAD]")}
        if None in ids.values():
            raise TokenizerError(f"{tokenizer_file}: a BERT tokenizer needs [CLS], [SEP] and [PAD] tokens "
                                 f"(found {ids}): is this the right folder?")
        self.cls_id, self.sep_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        _check_texts(texts)
        if max_len < 2:
            raise ValueError(f"max_len {max_len}: a BERT input needs at least [CLS] and [SEP]")
        enc = self._tok.encode_batch(list(texts), add_special_tokens=False)
        ids_bl = np.full((len(texts), max_len), self.pad_id, np.int32)
        mask_bl = np.zeros((len(texts), max_len), bool)
        for i, e in enumerate(enc):
            row = [self.cls_id, *list(e.ids)[: max_len - 2], self.sep_id]
            ids_bl[i, : len(row)] = row
            mask_bl[i, : len(row)] = True
        return ids_bl, mask_bl


def is_bert_tokenizer(folder: str | Path) -> bool:
    """Whether a folder's tokenizer is BERT's (tokenizer_config.json's class, or a converted BERT's kind)."""
    folder = Path(folder)
    cls = str(_read_json(folder / "tokenizer_config.json").get("tokenizer_class", ""))
    return cls.startswith("Bert") or _read_json(folder / "config.json").get("kind") == "bert"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_byte_level(folder: str | Path) -> bool:
    """Whether a T5 folder without a vocabulary file declares byte-level tokens: the embedded T5 saved by
    TextEncoder.save (config.json "source"), or a ByT5 checkpoint (tokenizer_config.json "tokenizer_class")."""
    folder = Path(folder)
    if _read_json(folder / "config.json").get("source") == BYTE_LEVEL_SOURCE:
        return True
    return _read_json(folder / "tokenizer_config.json").get("tokenizer_class") in ("ByT5Tokenizer", "ByT5TokenizerFast")


def load_tokenizer(folder: str | Path | None) -> Tokenizer:
    """None/"" -> the byte-level default; a folder -> its `spiece.model` (sentencepiece) or `tokenizer.json`
    (`tokenizers`), or bytes if the folder declares byte-level tokens (see `is_byte_level`). Any other folder raises
    TokenizerError: tokenizing a real T5's input as bytes would give wrong embeddings without any error."""
    if not folder:
        return ByteTokenizer()
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"T5 folder {folder} does not exist: check text.checkpoint (a converted T5 folder, "
                             "python -m musicflow_jax.convert t5 SRC DST), or set it to \"\" for the embedded T5")
    if (folder / "spiece.model").is_file():
        return SentencePieceTokenizer(folder / "spiece.model")
    if (folder / "tokenizer.json").is_file() and is_bert_tokenizer(folder):
        return BertWordPieceTokenizer(folder / "tokenizer.json")
    if (folder / "tokenizer.json").is_file():
        return FastTokenizer(folder / "tokenizer.json")
    if is_byte_level(folder):
        return ByteTokenizer()
    raise TokenizerError(f"T5 folder {folder} has no tokenizer (spiece.model or tokenizer.json): copy it from the "
                         f"original HF checkpoint folder into {folder} (python -m musicflow_jax.convert t5 does this)")


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer file(s) (TOKENIZER_FILES) of a T5 folder into `dst`; returns the names copied."""
    import shutil

    src, dst = Path(src), Path(dst)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and (src / name).resolve() != (dst / name).resolve():
            shutil.copy(src / name, dst / name)
            copied.append(name)
    return copied
