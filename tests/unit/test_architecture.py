"""The shape of the package, asserted: the layers contract (import-linter: front ends over the lifecycle over the
models over the foundations), no import cycle between any two modules (grimp), package imports at the top of files
(lazy ones only for heavy optional dependencies), one user-facing error base, tools that are scripts over the
installed package, and the packaging: `pip install .` declares what training and generation import and nothing of
the extras, installs no top-level `configs` package, and ships the configs inside the package."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import grimp
import pytest

import musicflow_jax
from musicflow_jax.errors import MusicFlowError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "musicflow_jax"
# function-local imports of the package's own modules that are allowed: each one loads a heavy optional dependency
# (torch / transformers through the embedding models) or keeps `import musicflow_jax` light
LAZY = {("musicflow_jax/evaluate/embedders/__init__.py", m) for m in (
    "musicflow_jax.evaluate.embedders.vggish", "musicflow_jax.evaluate.embedders.panns",
    "musicflow_jax.evaluate.embedders.ast_tagger", "musicflow_jax.evaluate.embedders.backend_features")} | {
    ("musicflow_jax/__init__.py", "musicflow_jax.inference"), ("musicflow_jax/__init__.py",
                                                               "musicflow_jax.inference.generation")}


def test_layers_contract_is_kept() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                           f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("musicflow_jax")
    modules = sorted(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in index:
            visit(m)
    assert len(modules) > 100 and cycles == []


def _function_level_package_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("musicflow_jax"):
                    found.append(inner.module)
                elif isinstance(inner, ast.Import):
                    found += [a.name for a in inner.names if a.name.startswith("musicflow_jax")]
    return found


def test_package_imports_are_at_the_top_of_files() -> None:
    late = [(str(p.relative_to(ROOT)), m) for p in sorted(PACKAGE.rglob("*.py"))
            for m in _function_level_package_imports(p)]
    assert [x for x in late if x not in LAZY] == []


def test_every_user_facing_error_is_a_musicflow_error() -> None:
    """Every exception class the package defines for users subclasses MusicFlowError (the one type the CLIs catch);
    the two internal ones (a skipped clip, an unrestorable checkpoint step) never leave their module."""
    internal = {"SkipClipError", "_UnrestorableError"}
    found = []
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and node.name not in internal:
                found.append((p, node.name))
    assert len(found) >= 25
    import importlib

    for p, name in found:
        module = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        cls = getattr(importlib.import_module(module), name)
        assert inspect.isclass(cls) and issubclass(cls, MusicFlowError), (module, name)


def test_tools_are_scripts_over_the_installed_package() -> None:
    for p in sorted((ROOT / "tools").glob("*.py")):
        text = p.read_text()
        assert "sys.path" not in text, p.name  # no path edits: the package is installed (editable)
        assert not re.search(r"^\s*(from|import) tests\b", text, re.M), p.name
    for p in sorted((ROOT / "tests").rglob("*.py")):
        assert not re.search(r"^\s*(from|import) tools\b", p.read_text(), re.M), p.name


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                           "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("musicflow_jax-*.whl"))


def test_wheel_declares_the_runtime_and_ships_the_configs_inside_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
    assert {n.split("/")[0] for n in names} == {"musicflow_jax", wheel.name.split("-py3")[0] + ".dist-info"}
    configs = sorted(Path(n).name for n in names if n.startswith("musicflow_jax/configs/"))
    assert configs == sorted(p.name for p in (ROOT / "configs").glob("*.py"))
    packages = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert packages == on_disk | {"musicflow_jax.configs"}  # the explicit package list misses none
    runtime = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
               if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    names_only = {re.split(r"[<>=!~\[; ]", r)[0].lower().replace("_", "-") for r in runtime}
    assert {"jax", "flax", "optax", "orbax-checkpoint", "grain", "diffrax", "safetensors"} <= names_only
    forbidden = {"pytest", "ruff", "torch", "gradio", "panns-inference", "torchvggish", "music21", "transformers",
                 "selenium", "scikit-learn", "librosa", "import-linter"}
    assert names_only & forbidden == set()


def test_the_runtime_imports_only_the_declared_dependencies() -> None:
    """Importing the training and generation command lines and the API loads no module of an extra."""
    code = ("import sys; import musicflow_jax.cli.train, musicflow_jax.cli.generate, musicflow_jax.cli.export, "
            "musicflow_jax.inference.cascade; "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'music21', 'sklearn', 'selenium') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_package_version_and_lazy_api() -> None:
    assert musicflow_jax.__version__ and issubclass(musicflow_jax.MusicFlowError, ValueError)
    from musicflow_jax.inference.cascade import MusicFlow

    assert musicflow_jax.MusicFlow is MusicFlow
