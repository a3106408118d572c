"""Weight conversion: runtime loading with torch unavailable, clear errors on tampered checkpoints,
pytorch_model.bin and original encodec .th inputs, and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from musicflow_jax.backends.hubert import HubertSemantic
from musicflow_jax.convert.encodec import convert_encodec
from musicflow_jax.convert.hubert import convert_hubert
from musicflow_jax.convert.t5 import convert_t5
from musicflow_jax.core.config import TextConfig
from musicflow_jax.encoders.codec import Codec
from musicflow_jax.encoders.converted import load_t5
from musicflow_jax.encoders.text import TextEncoder
from musicflow_jax.models.params import WeightsError
from musicflow_jax.testing.tiny_models import TINY_ENCODEC, save_tiny_encodec, save_tiny_hubert, save_tiny_t5

ROOT = Path(__file__).resolve().parents[3]
NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from musicflow_jax.encoders.codec import Codec
from musicflow_jax.core.config import TextConfig
from musicflow_jax.backends.hubert import HubertSemantic
from musicflow_jax.encoders.text import TextEncoder
d = sys.argv[1]
x = np.load(d + "/inputs.npz")
te = TextEncoder.load(TextConfig(checkpoint=d + "/t5", max_len=16, dim=32))
codec = Codec.load(d + "/encodec")
sem = HubertSemantic.load(d + "/hubert", None, 2)
np.savez(d + "/out_no_torch.npz", text=np.asarray(te.encode(x["ids"], x["mask"])),
         audio=np.asarray(codec.decode_latents(x["z"])), feats=np.asarray(sem.features(x["wav"])))
assert not any(m == "torch" or m.startswith("torch.") for m, v in sys.modules.items() if v is not None)
print("NO_TORCH_OK")
"""


def test_converted_files_load_without_torch(tmp_path):
    convert_t5(save_tiny_t5(tmp_path / "hf_t5"), tmp_path / "t5")
    convert_encodec(save_tiny_encodec(tmp_path / "hf_enc"), tmp_path / "encodec")
    convert_hubert(save_tiny_hubert(tmp_path / "hf_hub"), tmp_path / "hubert")
    te = TextEncoder.load(TextConfig(checkpoint=str(tmp_path / "t5"), max_len=16, dim=32))
    ids, mask = te.tokenize(["piano", "rainy jazz"])
    rs = np.random.RandomState(0)
    z = rs.randn(1, 6, 16).astype(np.float32)
    wav = rs.randn(1, 3200).astype(np.float32) * 0.1
    np.savez(tmp_path / "inputs.npz", ids=ids, mask=mask, z=z, wav=wav)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "NO_TORCH_OK" in proc.stdout, proc.stderr[-3000:]
    out = np.load(tmp_path / "out_no_torch.npz")
    np.testing.assert_allclose(out["text"], np.asarray(te.encode(ids, mask)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["audio"], np.asarray(Codec.load(tmp_path / "encodec").decode_latents(z)),
                               rtol=1e-5, atol=1e-6)
    feats = np.asarray(HubertSemantic.load(tmp_path / "hubert", None, 2).features(wav))
    np.testing.assert_allclose(out["feats"], feats, rtol=1e-5, atol=1e-6)


def _tamper(src: Path, drop: str | None = None, reshape: str | None = None) -> None:
    state = load_file(str(src / "model.safetensors"))
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = np.zeros(state[reshape].shape[:-1] + (state[reshape].shape[-1] + 1,), np.float32)
    save_file(state, str(src / "model.safetensors"))


def test_tampered_hf_checkpoints_give_clear_errors(tmp_path):
    src = save_tiny_t5(tmp_path / "t5_missing")
    _tamper(src, drop="encoder.block.1.layer.0.SelfAttention.k.weight")
    with pytest.raises(WeightsError, match=r"missing keys \(1\): block\.1\.attn\.k\.kernel"):
        convert_t5(src, tmp_path / "out1")
    src = save_tiny_hubert(tmp_path / "hub_shape")
    _tamper(src, reshape="encoder.layers.0.feed_forward.output_dense.weight")
    with pytest.raises(WeightsError, match=r"shape mismatches \(1\): encoder\.layers\.0\.feed_forward\.output_dense"
                                              r"\.kernel: checkpoint \(65, 32\) vs model \(64, 32\)"):
        convert_hubert(src, tmp_path / "out2")
    src = save_tiny_encodec(tmp_path / "enc_extra")
    state = load_file(str(src / "model.safetensors"))
    state["decoder.layers.99.conv.weight"] = np.zeros((1, 1, 1), np.float32)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): decoder\.layers\.99\.conv\.kernel"):
        convert_encodec(src, tmp_path / "out3")
    src = save_tiny_t5(tmp_path / "t5_foreign")
    state = load_file(str(src / "model.safetensors"))
    state["decoder.final_layer_norm.weight"] = np.ones(32, np.float32)  # seq2seq decoder: ignored
    state["something.else"] = np.zeros(3, np.float32)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(WeightsError, match="1 checkpoint keys have no conversion rule: something.else;"):
        convert_t5(src, tmp_path / "out4")


def test_tampered_converted_files_give_clear_errors(tmp_path):
    out = convert_encodec(save_tiny_encodec(tmp_path / "hf"), tmp_path / "flax")
    flat = load_file(str(out / "model.safetensors"))
    del flat["quantizer.layers.2.codebook.embed"]
    flat["decoder.layers.0.conv.bias"] = np.zeros((3,), np.float32)
    save_file(flat, str(out / "model.safetensors"))
    with pytest.raises(WeightsError) as err:
        Codec.load(out)
    msg = str(err.value)
    assert "missing keys (1): quantizer.layers.2.codebook.embed" in msg
    assert "decoder.layers.0.conv.bias: checkpoint (3,) vs model (64,)" in msg
    assert str(out) in msg
    with pytest.raises(WeightsError, match="not a converted Flax checkpoint"):
        Codec.load(tmp_path / "hf")
    with pytest.raises(WeightsError, match="holds a 'encodec' model, expected 't5'"):
        load_t5(out)
    with pytest.raises(WeightsError, match="expected converted weights"):
        Codec.load(tmp_path / "nowhere")


def test_pytorch_bin_checkpoint_converts_like_safetensors(tmp_path):
    import shutil

    import torch
    from transformers import T5EncoderModel

    src = save_tiny_t5(tmp_path / "st", seed=7, feed_forward_proj="gated-gelu")
    (tmp_path / "bin").mkdir()
    for name in ("config.json", "tokenizer_config.json"):  # legacy layout: config (+ tokenizer) + pickled state
        shutil.copy(src / name, tmp_path / "bin" / name)
    torch.save(T5EncoderModel.from_pretrained(src).state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    a = load_file(str(convert_t5(src, tmp_path / "a") / "model.safetensors"))
    b = load_file(str(convert_t5(tmp_path / "bin", tmp_path / "b") / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _to_original_encodec_name(key: str, convtr: set[int]) -> str:
    """HF EncodecModel name -> facebookresearch/encodec name (inverse of the HF conversion script's mapping)."""
    key = key.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                                "weight_v")
    m = re.match(r"quantizer\.layers\.(\d+)\.codebook\.(.*)", key)
    if m:
        return f"quantizer.vq.layers.{m[1]}._codebook.{m[2]}"
    m = re.match(r"(encoder|decoder)\.layers\.(\d+)\.(.*)", key)
    side, idx, rest = m[1], int(m[2]), m[3]
    if rest.startswith("conv."):
        kind = "convtr.convtr" if side == "decoder" and idx in convtr else "conv.conv"
        rest = kind + rest[4:]
    elif rest.startswith(("block.", "shortcut.")):
        rest = re.sub(r"\.conv\.", ".conv.conv.", rest)
    return f"{side}.model.{idx}.{rest}"


def test_original_encodec_th_checkpoint(tmp_path):
    import torch

    src = save_tiny_encodec(tmp_path / "hf", seed=3)
    state = load_file(str(src / "model.safetensors"))
    convtr = {3, 6, 9, 12}  # decoder transposed convs for 4 ratios, 1 residual layer
    original = {_to_original_encodec_name(k, convtr): torch.from_numpy(v) for k, v in state.items()}
    assert "decoder.model.3.convtr.convtr.weight_g" in original and "encoder.model.13.lstm.weight_ih_l0" in original
    torch.save(original, tmp_path / "encodec_tiny.th")
    with pytest.raises(WeightsError, match="no config"):
        convert_encodec(tmp_path / "encodec_tiny.th", tmp_path / "bad")
    hf_cfg = json.loads((src / "config.json").read_text())
    via_th = load_file(str(convert_encodec(tmp_path / "encodec_tiny.th", tmp_path / "th", hf_config=hf_cfg)
                           / "model.safetensors"))
    via_hf = load_file(str(convert_encodec(src, tmp_path / "hf_out") / "model.safetensors"))
    assert via_th.keys() == via_hf.keys()
    for k in via_hf:
        np.testing.assert_array_equal(via_th[k], via_hf[k])


def test_cli_converts_all_kinds(tmp_path):
    sys.path.insert(0, str(ROOT))
    from musicflow_jax.cli.convert import main

    for kind, save in (("t5", save_tiny_t5), ("encodec", save_tiny_encodec), ("hubert", save_tiny_hubert)):
        assert main([kind, str(save(tmp_path / f"hf_{kind}")), str(tmp_path / kind)]) == 0
        out = tmp_path / kind
        meta = json.loads((out / "config.json").read_text())
        assert meta["kind"] == kind and (out / "model.safetensors").is_file()
    assert json.loads((tmp_path / "encodec" / "config.json").read_text())["config"]["hidden_size"] == \
        TINY_ENCODEC["hidden_size"]
    # the T5 tokenizer declaration travelled with the converted folder
    assert (tmp_path / "t5" / "tokenizer_config.json").read_bytes() == \
        (tmp_path / "hf_t5" / "tokenizer_config.json").read_bytes()
    with pytest.raises(SystemExit):
        main(["vocoder", "a", "b"])
