"""The real train and generation steps compiled for TPU topologies on this CPU (libtpu's compile-only devices;
.ci/setup_env.sh installs libtpu with tools/install_libtpu.sh): per-chip parameter bytes, FLOPs against the CPU compile
of the same step, multi-host batch split, a config too large for the chip, and the one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from musicflow_jax.cli import aot as aot_cli
from musicflow_jax.core import config
from musicflow_jax.pod import compile as pod_compile
from musicflow_jax.pod import topology

ROOT = Path(__file__).resolve().parents[3]
# every parameter dimension a multiple of 4 and of the TPU's 128-lane tiles where it is large
TINY = ["model.dim=128", "model.mlp_dim=512", "model.heads=4", "model.feature_dim=128", "model.time_dim=128",
        "text.dim=128", "data.batch_size=16", "mesh.shape=(1,-1,1)"]


@pytest.fixture(scope="module")
def tpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "tpu.json"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # TPU executables: not cached
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("tpu_child.py")), str(out), json.dumps(TINY)],
                          cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_each_chip_holds_its_fsdp_share_of_the_state(tpu):
    """FSDP over the 4 chips of v5e:2x2: each chip holds exactly 1/4 of every parameter with an "embed" axis and all of
    the few without one (< 2 % of the bytes: the time MLP's output, per-channel biases), and XLA's argument bytes are
    at least the state's shards (params, EMA, two Adam moments)."""
    s = tpu["single"]
    assert s["report"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and s["report"]["fits"]
    rep = s["replicated_param_bytes"]
    assert rep < 0.02 * s["params_total_bytes"]
    assert s["params_chip_bytes"] == (s["params_total_bytes"] - rep) // 4 + rep
    # XLA's argument bytes: the state's shards + batch + text encoder, TPU tiles padding small dims (4 heads of 32)
    argument = s["report"]["memory_per_device_gib"]["argument"] * 2**30
    assert s["state_chip_bytes"] <= argument + 2**20 and argument < 3 * s["state_chip_bytes"]



def test_fsdp_collectives_are_read_as_they_run(tpu):
    """6 scanned blocks of two 512 x 2048 matrices, FSDP over chip pairs, 2 data-parallel pairs. The TPU compiler
    splits gathers into pieces fused with the matmuls (one channel in several fusions: one collective), writes the
    gradient's reduce-scatter as an all-reduce fused with the slice each chip keeps, and names mesh groups with
    device_ids. Read as they run: each block gathers both bf16 matrices forward and again backward (4 x 2 MiB),
    reduce-scatters their bf16 gradients over its FSDP pair (4 MiB) and all-reduces its 2-MiB shard over the data
    pair: per chip 24 x 1/2 x 2 + 6 x 1/2 x 4 + 6 x 2 x 1/2 x 2 = 48 MiB on the wire."""
    mib = 2.0**20
    assert tpu["fsdp_layers"] == [["all-gather", 2, 2 * mib, 24], ["all-reduce", 2, 2 * mib, 6],
                                  ["reduce-scatter", 2, 4 * mib, 6]]


def test_fsdp_step_replayed_in_its_compiled_order(tpu):
    """The same program replayed in its compiled order (pod/schedule.py): the matmul FLOPs read off the TPU's
    convolutions are the closed form per chip (2 x 2 rows of 256 tokens: forward 2 matmuls, the remat recomputes the
    first, backward 4, each 2 x 512 x 512 x 2048, 6 blocks); the compiler overlaps part of the collectives (the
    backward gathers run as async collective fusions beside the matmuls; the forward gathers and the gradient
    reductions block), so the estimate lies strictly between the overlapped and the serial roofline."""
    s = tpu["fsdp_schedule"]
    assert s["matmul_flops"] == 6 * 7 * 2 * 512 * 512 * 2048
    assert 0 < s["exposed_s"] < s["collective_s"]
    assert s["bound_s"] < s["sched_s"] < s["serial_s"]


def test_tpu_flops_match_cpu(tpu):
    """The unrolled step's FLOPs on 4 TPU chips (XLA's TPU cost analysis, per chip x 4) equal the same step compiled
    for 4 CPU devices within 5 %, and the count of the lowered program the training MFU uses within 10 % (measured
    -6 %: the compilers simplify some of the lowered program's elementwise work)."""
    cfg = config.load("stage1_tiny", [*TINY, "model.scan_layers=false"])
    cpu = pod_compile.train_step(cfg, jax.devices()[:4])
    tpu_total = 4 * tpu["single"]["xla_flops_per_chip"]
    assert tpu_total == pytest.approx(4 * cpu.xla_cost["flops"], rel=0.05)
    assert tpu_total == pytest.approx(tpu["single"]["report"]["step_gflop"] * 1e9, rel=0.10)


def test_multi_host_topology_splits_the_batch_by_host(tpu):
    """v5e:4x4 is 16 chips on 4 hosts: each host feeds its own 4 rows of the 16 (the loader's process-local rows)."""
    m = tpu["multi"]["report"]
    assert tpu["multi"]["hosts"] == 4 and m["hosts"] == 4 and m["batch_per_host"] == 4
    shards = m["data_shards"]
    assert shards["batch_shards"] == 16 and shards["rows_per_shard"] == 1 and shards["hosts_with_disjoint_rows"]
    assert sorted(tuple(v) for v in shards["rows_per_host"].values()) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert m["loops"] == [2, 2, 2, 2]  # the scanned halves, forward and backward, 2 layers each
    assert m["collectives"]["all-gather"]["count"] > 0 or m["collectives"]["all-reduce"]["count"] > 0


def test_a_config_too_large_for_the_chip_is_reported_with_its_numbers(tpu):
    """~6.4 B parameters (16 bytes each of state) on 4 chips of 16 GiB: does not fit, and says by how much."""
    r = tpu["too_large"]
    assert r["fits"] is False and r["memory_per_device_gib"]["peak"] > r["hbm_gib"] == 16.0
    # the TPU compiler refuses it, naming what it needed; no program, so no roofline
    assert "RESOURCE_EXHAUSTED" in r["refused"] and "roofline" not in r
    assert r["memory_per_device_gib"]["argument"] > 16 * r["params"] / 4 / 2**30 * 0.99


def test_generation_compiles_with_its_solver_loops(tpu):
    """--generate: both stages' solves for 2 s (100 + 150 frames), 8 midpoint steps each = 16 evaluations per stage;
    the step loops' data-dependent bounds are taken from the solver (8 each)."""
    g = tpu["cli_generate"]
    assert g["code"] == 0, g["stderr"]
    rep = json.loads(g["stdout"])["generate"]
    assert rep["frames"] == [100, 150] and rep["nfe"] == {"stage1": 16, "stage2": 16}
    assert rep["loops"].count(8) == 2 and rep["fits"] and rep["step_gflop"] > 0
    assert "train" not in json.loads(g["stdout"]) and "roofline" in rep and rep["batch"] == 4  # one row per chip


def test_bad_mesh_is_one_line(tpu):
    bad = tpu["cli_bad_mesh"]
    assert bad["code"] == 2 and bad["stderr"].strip().splitlines()[-1].startswith("error: config key 'mesh.shape'")


def test_unknown_topology_and_missing_libtpu_are_one_line(capsys, tmp_path):
    assert aot_cli.main(["--config", "stage1_tiny", "--topology", "v9:2x2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v9:2x2" in err[0] and "v5e:16x16" in err[0]
    assert aot_cli.main(["--config", "stage1_tiny", "--topology", "v5e:2x2", "--libtpu",
                         str(tmp_path / "libtpu.so")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tools/install_libtpu.sh" in err[0]


def test_the_installed_libtpu_is_found():
    assert topology.libtpu_path().name == "libtpu.so"
