"""Packaging: one source of metadata and version, the licence, py.typed, a
wheel and an sdist that carry what they should (the sdist: what its tests
need, so that pytest collects from an unpacked sdist), and the tree clean
under ruff and mypy as pyproject.toml configures them (ruff: the whole tree;
mypy: the files its [tool.mypy] section names)."""
from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

import semiring_semicrf

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_installed_metadata():
    assert semiring_semicrf.__version__ == importlib.metadata.version("semiring-semicrf")
    assert semiring_semicrf.__version__ == PYPROJECT["project"]["version"]


def test_metadata_lives_in_pyproject_only():
    setup_cfg = configparser.ConfigParser()
    setup_cfg.read(ROOT / "setup.cfg")
    assert "metadata" not in setup_cfg.sections()
    duplicated = {"python_requires", "install_requires", "version", "name"} & set(setup_cfg["options"])
    assert not duplicated and "options.entry_points" not in setup_cfg and "options.extras_require" not in setup_cfg
    project = PYPROJECT["project"]
    assert project["requires-python"] == ">=3.10" and project["license"] == "MIT"
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in project["classifiers"])
    assert "einops" not in str(project["dependencies"]) and "matplotlib" not in str(project["dependencies"])
    assert any("matplotlib" in r for r in project["optional-dependencies"]["plot"])


def test_licence_is_mit_and_in_the_installed_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the semiring-semicrf developers" in text
    distribution = importlib.metadata.distribution("semiring-semicrf")
    assert distribution.metadata["License-Expression"] == "MIT"
    assert "LICENSE" in distribution.metadata.get_all("License-File")


def test_package_is_typed():
    assert (Path(semiring_semicrf.__file__).parent / "py.typed").is_file()


def _tool(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[lint]')")


def test_ruff_is_clean_on_the_whole_tree():
    _tool("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_on_the_configured_files():
    _tool("mypy")
    assert "semiring_semicrf" in PYPROJECT["tool"]["mypy"]["files"]
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and the wheel, built from this checkout (python -m build)."""
    _tool("build")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def test_wheel_carries_licence_types_and_kernels(dists):
    _, wheel = dists
    names = zipfile.ZipFile(wheel).namelist()
    version = PYPROJECT["project"]["version"]
    assert f"semiring_semicrf-{version}.dist-info/licenses/LICENSE" in names
    assert "semiring_semicrf/py.typed" in names and "semiring_semicrf/kernels/__init__.py" in names
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    # every module of the source tree ships (a package missing from setup.cfg would not)
    sources = {f"semiring_semicrf/{path.relative_to(ROOT / 'semiring_semicrf').as_posix()}"
               for path in (ROOT / "semiring_semicrf").rglob("*.py")}
    sources |= {f"semiring_semicrf/kernels/{path.name}" for path in (ROOT / "kernels").glob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))


def test_sdist_carries_what_its_tests_need_and_pytest_collects(dists, tmp_path):
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.iterdir()
    for needed in ("LICENSE", "CHANGELOG.md", "CITATION.cff", "mkdocs.yml", "tests/conftest.py",
                   "tests/strategies.py", "docs/index.md", "docs/hooks/sphinx_roles.py",
                   "notebooks/01_quickstart.ipynb", "examples/lightning_train.py", "benchmarks/gpu_bench.py",
                   "kernels/forward.py"):
        assert (unpacked / needed).is_file(), needed
    assert not list(unpacked.rglob("__pycache__"))
    shutil.rmtree(unpacked / "semiring_semicrf")  # collect against the installed package, as a user would
    # -P: the unpacked folder is not put first on sys.path
    result = subprocess.run([sys.executable, "-P", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=unpacked, capture_output=True, text=True, timeout=600)
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0 and "tests collected" in last and "error" not in last, result.stdout[-3000:]
