"""The training logger: TensorBoard event files and metrics.jsonl, written without importing PyTorch (training and
generation are JAX; tensorboardX would import torch, ~3 s per training process, only to recognise its tensors)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import sys
import numpy as np
from musicflow_jax.cli import train
from musicflow_jax.training.logger import MetricsWriter
w = MetricsWriter(sys.argv[1])
w.scalars(3, {"loss": 0.25, "lr": 1e-3})
w.scalars(4, {"loss": 0.125}, prefix="valid")
w.image(4, "chroma", np.arange(12.0).reshape(3, 4))
w.audio(4, "sample", np.zeros(240, np.float32), 24_000)
w.close()
assert "torch" not in sys.modules, "the training logger imported torch"
"""


def _events(folder: Path) -> list:
    from tensorboardX.proto.event_pb2 import Event  # the reader side may use torch: tests are offline work

    (path,) = folder.glob("events.out.tfevents.*")
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):  # TFRecord framing: length, its CRC, the record, its CRC
        (n,) = struct.unpack("<Q", data[i:i + 8])
        out.append(Event.FromString(data[i + 12:i + 12 + n]))
        i += 12 + n + 4
    return out


def test_event_files_and_jsonl_written_without_torch(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from musicflow_jax.training.logger import read_jsonl

    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 3, "split": "train", "loss": 0.25, "lr": 1e-3}]
    assert read_jsonl(tmp_path / "metrics.jsonl", "valid") == [{"step": 4, "split": "valid", "loss": 0.125}]
    values = {(e.step, v.tag): v for e in _events(tmp_path / "tb") for v in e.summary.value}
    assert values[3, "train/loss"].simple_value == 0.25
    np.testing.assert_allclose(values[3, "train/lr"].simple_value, 1e-3, rtol=1e-7)
    assert values[4, "valid/loss"].simple_value == 0.125
    assert (values[4, "chroma"].image.height, values[4, "chroma"].image.width) == (3, 4)
    assert values[4, "sample"].audio.sample_rate == 24_000 and values[4, "sample"].audio.length_frames == 240
