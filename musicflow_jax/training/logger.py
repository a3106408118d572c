"""Training observability: TensorBoard + JSONL writers, loss by flow-time bin, FLOP counts and MFU.

Only process 0 writes (other processes get a writer that drops everything). Model FLOPs per step come
from XLA's cost analysis of the lowered train step (forward + backward + optimizer, whole global batch); the
peak is `train.peak_tflops` per device or, when 0, a matmul peak measured on the spot
(`measure_matmul_peak`). MFU = achieved FLOP/s / (peak per device * devices).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

T_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def loss_by_t_bin(loss_b: np.ndarray, t_b: np.ndarray, edges: tuple[float, ...] = T_BINS) -> dict[str, float]:
    """Mean per-example loss in each flow-time bin [e_i, e_{i+1}); empty bins are left out."""
    loss_b, t_b = np.asarray(loss_b, np.float64), np.asarray(t_b, np.float64)
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (t_b >= lo) & ((t_b < hi) if hi < edges[-1] else (t_b <= hi))
        if sel.any():
            out[f"loss_t{lo:.2f}-{hi:.2f}"] = float(loss_b[sel].mean())
    return out


def program_flops(lowered: Any) -> float:
    """FLOPs of one call of a jitted function from XLA's cost analysis of its *lowered* (global, pre-partitioning,
    pre-fusion) program: the model's math counted the same on every platform and mesh. (A compiled program's
    count is per device and misses FLOPs in library calls such as cuBLAS GEMMs on GPU.)"""
    cost = lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (0 for None)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def analytic_flops(cfg: Any, n_params: int, n_text_params: int = 0) -> float:
    """Model FLOPs of one train step by the usual count (PaLM appendix B): 6 N per frame for the flow
    transformer's N params (forward + backward), plus self-attention 12 depth T^2 dim and cross-attention
    12 depth T L dim per example, plus the frozen text encoder's forward 2 N_text per token. Used where XLA's
    cost analysis gives no count (e.g. GPU)."""
    m, b, t, l = cfg.model, cfg.data.batch_size, cfg.data.frames, cfg.text.max_len
    flow = 6.0 * n_params * b * t + 12.0 * m.depth * b * t * m.dim * (t + l)
    return flow + 2.0 * n_text_params * b * l


def step_flops(lowered: Any, cfg: Any, n_params: int, n_text_params: int = 0) -> tuple[float, str]:
    """(FLOPs per step, source): XLA's count of the lowered step, else `analytic_flops`."""
    flops = program_flops(lowered)
    if flops > 0:
        return flops, "xla"
    return analytic_flops(cfg, n_params, n_text_params), "analytic"


def measure_matmul_peak(n: int = 1024, dtype: Any = jnp.float32, repeats: int = 5,
                        device: jax.Device | None = None) -> float:
    """Achieved FLOP/s of an n x n x n matmul on one device (best of `repeats`): a practical peak."""
    device = device or jax.local_devices()[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    b = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def mfu(flops_per_step: float, steps_per_s: float, peak_flops_per_device: float, n_devices: int) -> float:
    return flops_per_step * steps_per_s / max(peak_flops_per_device * n_devices, 1e-30)


def _tensorboardx_writer() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch (~3 s, ~0.5 GB) only to
    recognise torch tensors, and training and generation are JAX (PyTorch is for offline work only)."""
    import sys

    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError: numpy only
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Scalars to TensorBoard event files (workdir/tb) and one JSON object per line (workdir/metrics.jsonl)."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            SummaryWriter = _tensorboardx_writer()
            Path(workdir).mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(Path(workdir) / "tb"))
            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._jsonl.write(json.dumps({"step": int(step), "split": prefix, **clean}) + "\n")
        self._jsonl.flush()

    def audio(self, step: int, name: str, wav: np.ndarray, sample_rate: int) -> None:
        if self.enabled:
            self._tb.add_audio(name, np.asarray(wav, np.float32).reshape(-1), step, sample_rate=sample_rate)

    def image(self, step: int, name: str, img_hw: np.ndarray) -> None:
        if self.enabled:
            x = np.asarray(img_hw, np.float32)
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
            self._tb.add_image(name, x[None], step)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def read_jsonl(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of one split; a torn last line (process killed mid-write) is ignored."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if r.get("split") == split]
