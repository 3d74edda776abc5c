"""Sliding-window detection and relevance maps.

The default model does not exist under the tests' isolated CLIPLAB_HOME (and training it takes
minutes), so localisation quality is checked with an encoder whose behaviour is known: a toy
"CLIP" that sees colours (a crop's embedding says how much of it is red, green or blue, and how much
of its border is cut through an object). Everything else (windows, preprocessing, batching, prompt
ensembles, background contrast, heatmaps, NMS, pixel coordinates, the CLI) runs for real, the CLI
on a random-weights ViT.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import random_model
from PIL import Image, ImageDraw

from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.detect import (
    Detection,
    accumulate_heatmap,
    box_iou,
    detect,
    draw_overlay,
    nms,
    relevance_map,
    sliding_windows,
)
from cliplab.model import get_preset
from cliplab.preprocess import Preprocessor

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class ColourPipeline:
    """Duck-typed :class:`cliplab.api.Pipeline`: image features are [red, green, blue fractions of
    the crop, share of grey, share of the crop's border covered by colour]; a text's feature is the
    colour it names (anything else: 'grey'). A crop fitting an object with a margin scores best."""

    embed_dim = 5
    logit_scale = 20.0
    name = "colour-toy"

    def __init__(self) -> None:
        self.preprocess = Preprocessor(image_size=32)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocess.config.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.config.std).view(1, 3, 1, 1)
        rgb = (pixels * std + mean) * 255
        masks = [((rgb - torch.tensor(c).view(1, 3, 1, 1)).abs().amax(1) < 40).float() for c in COLOURS.values()]
        coloured = torch.stack(masks, 1).amax(1)
        border = torch.cat([coloured[:, 0], coloured[:, -1], coloured[:, :, 0], coloured[:, :, -1]], 1).mean(1)
        fractions = [m.mean((1, 2)) for m in masks]
        return torch.stack([*fractions, 0.3 * (1 - coloured.mean((1, 2))), 3 * border], 1)

    def embed_texts(self, texts, **options) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else texts
        out = np.zeros((len(texts), 5), np.float32)
        for i, text in enumerate(texts):
            names = [j for j, name in enumerate(COLOURS) if name in text]
            out[i, names[0] if names else 3] = 1
        return out


def canvas(objects: dict[str, tuple[int, int, int, int]], size=(160, 100)) -> Image.Image:
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for name, (x0, y0, x1, y1) in objects.items():
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=COLOURS[name])
    return image


def test_windows_cover_the_image_at_every_scale_within_its_bounds():
    windows = sliding_windows(300, 180, scales=(0.25, 0.5), overlap=0.5)
    assert windows.shape[1] == 4
    assert (windows[:, :2] >= 0).all() and (windows[:, 2] <= 300).all() and (windows[:, 3] <= 180).all()
    sides = windows[:, 2] - windows[:, 0]
    assert set(sides) == {45, 90} and (sides == windows[:, 3] - windows[:, 1]).all()
    for side in (45, 90):
        cover = accumulate_heatmap(windows[sides == side], np.ones((sides == side).sum()), 300, 180)
        assert (cover == 1).all()  # every pixel under some window of each scale


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (7, 40)])
def test_images_smaller_than_the_minimum_window_are_one_window_wide(size):
    windows = sliding_windows(*size)
    side = min(size)
    assert len(windows) >= 1 and ((windows[:, 2] - windows[:, 0]) == side).all()
    assert (windows[:, 2] <= size[0]).all() and (windows[:, 3] <= size[1]).all()


def test_heatmap_is_the_mean_of_the_covering_windows():
    rng = np.random.default_rng(0)
    windows = sliding_windows(40, 30, scales=(0.4, 0.7), overlap=0.5)
    scores = rng.random(len(windows))
    expected = np.zeros((30, 40))
    for y in range(30):
        for x in range(40):
            inside = [(x0 <= x < x1 and y0 <= y < y1) for x0, y0, x1, y1 in windows]
            expected[y, x] = scores[inside].mean()
    np.testing.assert_allclose(accumulate_heatmap(windows, scores, 40, 30), expected, rtol=1e-5)


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 9, 10], [21, 20, 30, 31]])
    scores = np.array([0.9, 0.95, 0.5, 0.3, 0.6])
    assert nms(boxes, scores, 0.5) == [1, 4]
    assert nms(boxes, scores, 0.99) == [1, 0, 4, 2, 3]
    rng = np.random.default_rng(1)
    xy = rng.integers(0, 80, (60, 2))
    random_boxes = np.concatenate([xy, xy + rng.integers(5, 40, (60, 2))], 1)
    random_scores = rng.random(60)
    kept = nms(random_boxes, random_scores, 0.3)
    ious = box_iou(random_boxes, random_boxes)
    assert all(ious[a, b] <= 0.3 for a in kept for b in kept if a != b)  # survivors do not overlap
    for i in set(range(60)) - set(kept):  # each suppressed box overlaps a better survivor
        assert any(ious[i, k] > 0.3 and random_scores[k] > random_scores[i] for k in kept)
    assert box_iou(np.array([0, 0, 10, 10]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(1 / 3)


def test_each_query_finds_its_own_object_in_pixel_coordinates():
    truth = {"red": (15, 20, 50, 55), "blue": (100, 45, 145, 90)}
    result = detect(ColourPipeline(), canvas(truth), ["a red circle", "a blue circle"], threshold=0.5, overlap=0.6)
    assert set(result.heatmaps) == {"a red circle", "a blue circle"}
    assert result.heatmaps["a red circle"].shape == (100, 160)
    for query, colour in [("a red circle", "red"), ("a blue circle", "blue")]:
        best = result.best(query)
        assert isinstance(best, Detection)
        assert box_iou(np.array(best.box), np.array([truth[colour]]))[0, 0] >= 0.5, (query, best)
        heat = result.heatmaps[query]
        x0, y0, x1, y1 = truth[colour]
        assert heat[y0:y1, x0:x1].mean() > 2 * heat.mean()
    assert all(d.score >= 0.5 for d in result.boxes)
    assert [d.score for d in result.boxes] == sorted((d.score for d in result.boxes), reverse=True)
    # nothing green on the canvas: no green box above the threshold
    assert not detect(ColourPipeline(), canvas(truth), ["a green circle"], threshold=0.5, overlap=0.6).boxes


def test_best_box_hit_rate_is_far_above_a_random_box():
    """The benchmark's measure on known-behaviour data: random positions and sizes, one query each."""
    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    hits, random_hits = [], []
    for _ in range(8):
        side = rng.randint(20, 45)
        x, y = rng.randint(0, 128 - side), rng.randint(0, 128 - side)
        truth = np.array([[x, y, x + side, y + side]])
        result = detect(
            ColourPipeline(),
            canvas({"green": tuple(truth[0])}, (128, 128)),
            "green",
            threshold=0.0,
            scales=(0.15, 0.22, 0.3, 0.4),
            overlap=0.6,
        )
        hits.append(box_iou(np.array(result.best("green").box), truth)[0, 0] >= 0.5)
        sides = nprng.integers(20, 46, 200)
        xs, ys = nprng.integers(0, 128 - sides + 1), nprng.integers(0, 128 - sides + 1)
        random_hits.append((box_iou(truth, np.stack([xs, ys, xs + sides, ys + sides], 1)) >= 0.5).mean())
    assert np.mean(hits) >= 0.75 and np.mean(hits) >= 5 * np.mean(random_hits), (hits, np.mean(random_hits))


def test_relevance_map_and_overlay(tmp_path):
    image = canvas({"red": (50, 25, 80, 55)})
    heat = relevance_map(ColourPipeline(), image, "red", overlap=0.5)
    assert heat.shape == (100, 160) and 0 <= heat.min() <= heat.max() <= 1
    assert np.unravel_index(np.argmax(heat), heat.shape)[1] in range(50, 80)
    result = detect(ColourPipeline(), image, ["red"], overlap=0.5)
    overlay = draw_overlay(image, result, tmp_path / "overlay.png")
    assert overlay.size == image.size and Image.open(tmp_path / "overlay.png").size == image.size


@pytest.fixture
def model_and_image(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    canvas({"red": (10, 10, 60, 60)}, (120, 90)).save(tmp_path / "scene.png")
    return str(tmp_path / "model"), str(tmp_path / "scene.png")


def test_cli_detect_json_and_overlay(model_and_image, tmp_path, capsys):
    model, image = model_and_image
    out = tmp_path / "overlay.png"
    assert (
        main(
            [
                "detect",
                image,
                "a red ball",
                "a cat",
                "--model",
                model,
                "--threshold",
                "0",
                "--max-boxes",
                "2",
                "--out",
                str(out),
                "--json",
                "--scales",
                "0.5,0.8",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert len(result["boxes"]) == 4 and {b["label"] for b in result["boxes"]} == {"a red ball", "a cat"}
    for b in result["boxes"]:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 90 and 0 <= b["score"] <= 1
    assert Image.open(out).size == (120, 90)


def test_cli_explain_and_errors(model_and_image, tmp_path, capsys):
    model, image = model_and_image
    out = tmp_path / "relevance.png"
    assert (
        main(["explain", image, "a red ball", "--model", model, "--out", str(out), "--json", "--scales", "0.5,0.8"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert out.is_file() and 0 <= summary["peak"][0] < 120 and 0 <= summary["peak"][1] < 90
    assert main(["detect", str(tmp_path / "missing.png"), "a cat", "--model", model]) == 1
    assert "no such image file" in capsys.readouterr().err
    assert main(["detect", image, "a cat", "--model", model, "--scales", "0,2"]) == 1
    assert "--scales" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["detect", "explain", "generate"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out
