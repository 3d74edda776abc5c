"""Augmentation: a pure function of its keys, never mirroring a caption that names a side, and
on-the-fly augmentation in the training loader keyed by the stream position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cliplab.data import DataSpec, make_train_loader
from cliplab.data.augment import AugmentConfig, augment_image, augment_rng, mentions_side
from cliplab.preprocess import Preprocessor
from cliplab.tokenizer import Tokenizer


def arrow() -> Image.Image:
    """An asymmetric picture: a red block on the left half."""
    image = Image.new("RGB", (64, 48), "white")
    ImageDraw.Draw(image).rectangle((2, 10, 20, 38), fill="red")
    return image


def red_on_left(image: Image.Image) -> bool:
    pixels = np.asarray(image).astype(int)
    redness = pixels[..., 0] - pixels[..., 1]
    half = pixels.shape[1] // 2
    return redness[:, :half].sum() > redness[:, half:].sum()


def test_the_same_keys_give_the_same_image_and_other_keys_another():
    config = AugmentConfig()
    first = augment_image(arrow(), "a red block", config, augment_rng(0, "view", 1, "abc"))
    again = augment_image(arrow(), "a red block", config, augment_rng(0, "view", 1, "abc"))
    other = augment_image(arrow(), "a red block", config, augment_rng(0, "view", 2, "abc"))
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert first.size != other.size or not np.array_equal(np.asarray(first), np.asarray(other))


def test_captions_that_name_a_side_are_never_mirrored():
    flip_only = AugmentConfig(
        crop_scale=(1.0, 1.0), crop_ratio=(64 / 48, 64 / 48), brightness=0, contrast=0, saturation=0
    )
    plain = [augment_image(arrow(), "a red block", flip_only, augment_rng(1, i)) for i in range(40)]
    sided = [augment_image(arrow(), "a red block on the left", flip_only, augment_rng(1, i)) for i in range(40)]
    assert 5 < sum(not red_on_left(im) for im in plain) < 35  # about half are mirrored
    assert all(red_on_left(im) for im in sided)
    assert mentions_side("Right arrow") and mentions_side("turn LEFT") and not mentions_side("bright light")


def test_crops_stay_inside_the_image_and_within_the_scale():
    config = AugmentConfig(crop_scale=(0.5, 0.8), brightness=0, contrast=0, saturation=0, flip=False)
    for i in range(30):
        out = augment_image(arrow(), "x", config, augment_rng(2, i))
        area = out.width * out.height / (64 * 48)
        assert out.width <= 64 and out.height <= 48 and 0.4 < area <= 0.85


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crop_scale": [0.0, 1.0]}, "crop_scale"),
        ({"brightness": 1.5}, "brightness"),
        ({"rotate": 10}, "unknown augment keys"),
    ],
)
def test_bad_settings_are_refused_with_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig.from_dict(options)


def test_the_loader_augments_by_stream_position_whatever_the_workers_or_start(tmp_path):
    rows = ["image,caption"]
    for i, colour in enumerate(["red", "green", "blue", "orange", "purple", "black"]):
        image = Image.new("RGB", (40, 40), "white")
        ImageDraw.Draw(image).rectangle((2 + i, 4, 24, 30), fill=colour)
        image.save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {colour} block")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    spec = DataSpec([(str(tmp_path / "pairs.csv"), 1.0)])
    preprocess, tokenizer = Preprocessor(image_size=32), Tokenizer(context_length=16)

    def batches(workers: int, start: int, augment: AugmentConfig | None, count: int) -> list[torch.Tensor]:
        loader = make_train_loader(
            spec, preprocess, tokenizer, 3, seed=5, workers=workers, start_batch=start, augment=augment
        )
        it = iter(loader)
        return [next(it)[0] for _ in range(count)]

    augment = AugmentConfig()
    straight = batches(0, 0, augment, 4)
    assert all(torch.equal(a, b) for a, b in zip(straight[2:], batches(1, 2, augment, 2)))
    plain = batches(0, 0, None, 4)
    assert not any(torch.equal(a, b) for a, b in zip(straight, plain))
