"""CLIP-guided generation on a random-weights ViT (the default model does not exist under the
tests' isolated CLIPLAB_HOME): the parameterisation, determinism by seed, that the optimisation
raises the image-text similarity, and the CLI's outputs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import random_model
from PIL import Image

from cliplab.api import Pipeline
from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.generate import FourierImage, cutouts, generate, spherical_distance
from cliplab.model import get_preset


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(random_model(get_preset("ViT-nano")), device="cpu")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_fourier_image_is_a_valid_picture_and_can_start_from_an_image():
    image = FourierImage(24, torch.Generator().manual_seed(0))().detach()
    assert image.shape == (1, 3, 24, 24) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert float(image.std()) < 0.05  # a faint start, near mid-grey
    start = Image.fromarray(np.random.default_rng(0).integers(30, 225, (24, 24, 3), dtype=np.uint8))
    again = FourierImage(24, torch.Generator().manual_seed(0), init=start)()
    expected = torch.from_numpy(np.asarray(start, np.float32) / 255).permute(2, 0, 1)[None]
    torch.testing.assert_close(again.detach(), expected, atol=2e-3, rtol=0)


def test_spherical_distance_and_cutouts():
    a = torch.tensor([[1.0, 0.0]])
    assert float(spherical_distance(a, a)) == pytest.approx(0, abs=1e-6)
    assert float(spherical_distance(a, torch.tensor([[0.0, 3.0]]))) == pytest.approx(2 * (torch.pi / 4) ** 2)
    image = torch.rand(1, 3, 40, 40)
    crops = cutouts(image, 5, 16, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 16, 16) and float(crops.min()) >= 0 and float(crops.max()) <= 1
    assert torch.equal(crops, cutouts(image, 5, 16, torch.Generator().manual_seed(0)))


@pytest.mark.slow
def test_same_seed_same_image_other_seed_other_image_and_similarity_rises(pipeline):
    options = {"steps": 8, "size": 48, "cutouts_per_step": 4, "snapshots": 4, "lr": 0.1}
    first = generate(pipeline, "a red apple", seed=3, **options)
    second = generate(pipeline, "a red apple", seed=3, **options)
    other = generate(pipeline, "a red apple", seed=4, **options)
    assert png_bytes(first.image) == png_bytes(second.image)
    assert first.similarities == second.similarities
    assert png_bytes(first.image) != png_bytes(other.image)
    assert first.image.size == (48, 48) and len(first.similarities) == 9
    assert [step for step, _ in first.snapshots] == [0, 2, 4, 6, 8]
    assert first.final_similarity > first.similarities[0] + 0.01, first.similarities
    assert all(p.requires_grad for p in pipeline.model.parameters())  # the model is left as it was


def test_cli_generate_writes_image_strip_and_curve(tmp_path, capsys):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    out = tmp_path / "apple.png"
    assert (
        main(
            [
                "generate",
                "a red apple",
                "--steps",
                "3",
                "--seed",
                "1",
                "--size",
                "32",
                "--cutouts",
                "2",
                "--out",
                str(out),
                "--model",
                str(tmp_path / "model"),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["image"] == str(out) and summary["seed"] == 1
    assert Image.open(out).size == (32, 32)
    assert Image.open(summary["strip"]).width > 32 and Image.open(summary["curve"]).format == "PNG"
    assert main(["generate", " ", "--out", str(out), "--model", str(tmp_path / "model")]) == 1
    assert "non-empty" in capsys.readouterr().err
