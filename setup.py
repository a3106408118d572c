"""musicflow_jax: cascaded flow matching for text-guided music generation, in JAX/Flax NNX."""

from pathlib import Path

from setuptools import find_packages, setup


def _reqs(name: str) -> list[str]:
    lines = (Path(__file__).parent / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _pinned(package: str) -> str:
    return next(r.split("==")[1].split()[0] for r in _reqs("requirements.txt") if r.startswith(f"{package}=="))


setup(
    name="musicflow_jax",
    version="0.1.0",
    description="MusicFlow (arXiv 2410.20478) in JAX/Flax NNX: cascaded flow matching text-to-music.",
    packages=find_packages(include=["musicflow_jax", "musicflow_jax.*", "configs"]),
    package_data={"musicflow_jax": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=_reqs("requirements.txt"),
    extras_require={"tools": _reqs("requirements-torch.txt") + ["encodec"],
                    "app": _reqs("requirements-app.txt"),  # the web demo (musicflow_jax/app.py)
                    # accelerators: the plugin of the pinned jax version (requirements.txt)
                    "cuda12": [f"jax[cuda12]=={_pinned('jax')}"], "tpu": [f"jax[tpu]=={_pinned('jax')}"]},
)
