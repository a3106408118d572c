"""Text tokenizers for the T5 encoder: numpy in, numpy out, no torch.

`ByteTokenizer` is the embedded default (ByT5 convention: pad=0, eos=1, unk=2, byte b -> b+3),
needing no vocabulary file. A user's checkpoint folder with a sentencepiece model uses the real
tokenizer instead (see `load_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

PAD_ID, EOS_ID, UNK_ID, BYTE_OFFSET = 0, 1, 2, 3


class TokenizerError(ValueError):
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


def load_tokenizer(folder: str | Path | None) -> Tokenizer:
    """`spiece.model` in `folder` -> sentencepiece; otherwise the byte-level default."""
    if folder:
        spm_file = Path(folder) / "spiece.model"
        if spm_file.is_file():
            return SentencePieceTokenizer(spm_file)
    return ByteTokenizer()
