"""Torch-free one-shot text queries: a cached ONNX export of the store's text encoder answers with the
torch path's vectors, only for the exact model it was exported from, and `cliplab search` then runs
without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import random_model
from PIL import Image

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.fast_queries import SETTINGS_FILE, OnnxTextQueries, cache_folder, save_text_queries
from cliplab.model import get_preset

pytest.importorskip("onnxruntime")
TEXTS = ["a red square", "two dogs running in the snow", "", "a very long caption " * 20, "ünïcödé ✓"]


@pytest.fixture
def model_dir(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=3), tmp_path / "model", "cliplab")
    return tmp_path / "model"


def test_cached_encoder_gives_the_torch_vectors_for_its_model_only(model_dir, tmp_path):
    clip = cliplab.load(model_dir, device="cpu", precision="fp32")
    assert OnnxTextQueries.open(clip.identity.fingerprint) is None  # nothing cached yet
    folder = save_text_queries(clip)
    assert folder == cache_folder(clip.identity.fingerprint) and (folder / SETTINGS_FILE).is_file()
    fast = OnnxTextQueries.open(clip.identity.fingerprint)
    assert fast is not None and fast.identity == clip.identity
    got, want = fast.embed_texts(TEXTS), clip.embed_texts(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    print("max |onnx - torch|:", float(np.abs(got - want).max()))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got * want).sum(-1).min() > 0.99999

    other = random_model(get_preset("ViT-nano"), seed=4)
    write_checkpoint(other, tmp_path / "other", "cliplab")
    assert OnnxTextQueries.open(cliplab.load(tmp_path / "other", device="cpu").identity.fingerprint) is None
    # a cache whose settings name another model is not used for this fingerprint
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    settings["model"]["fingerprint"] = "0" * 32
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    assert OnnxTextQueries.open(clip.identity.fingerprint) is None
    with pytest.raises(ValueError, match="texts only"):
        fast.embed_images(["x.png"])


@pytest.mark.slow
def test_second_text_search_runs_without_torch_and_finds_the_same(model_dir, tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(pics / f"{i}.png")
    captions = tmp_path / "captions.csv"
    captions.write_text("id,text\n" + "".join(f"t{i},caption number {i}\n" for i in range(8)))
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    index = [
        sys.executable,
        "-m",
        "cliplab",
        "index",
        str(pics),
        "--store",
        str(store),
        "--captions",
        str(captions),
        "--model",
        str(model_dir),
        "--json",
    ]
    subprocess.run(index, check=True, capture_output=True, env=env, timeout=300)
    probe = (
        "import json, sys; from cliplab.cli import main; "
        f"main(['search', {str(store)!r}, 'caption number 3', '--target', 'all', '-k', '4', '--json']); "
        "print(json.dumps({'torch': 'torch' in sys.modules}))"
    )
    runs = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        output, marker = result.stdout.rsplit("\n{", 1)
        runs.append((json.loads(output), json.loads("{" + marker)))
    (first, first_marker), (second, second_marker) = runs
    assert first_marker == {"torch": True} and second_marker == {"torch": False}
    assert [h["id"] for h in first["hits"]] == [h["id"] for h in second["hits"]]
    assert [h["score"] for h in first["hits"]] == pytest.approx([h["score"] for h in second["hits"]], abs=1e-5)
