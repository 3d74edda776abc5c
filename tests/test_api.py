"""The Python API: load -> embed -> zero-shot classify, on real computation with small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_model
from PIL import Image

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.model import get_preset
from cliplab.templates import IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_7, get_templates
from cliplab.zeroshot import ZeroShotClassifier


@pytest.fixture
def clip(tmp_path) -> cliplab.Pipeline:
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    # fp32: these tests check exact equalities; the bf16 path is compared with it in test_inference.py.
    return cliplab.load(tmp_path / "model", device="cpu", precision="fp32")


@pytest.fixture
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80 + 10 * i, 90, 3), dtype=np.uint8)) for i in range(5)]


def test_embed_images_is_normalised_encode_image_of_preprocessed_pixels(clip, images):
    embeddings = clip.embed_images(images, batch_size=2)
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, clip.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    pixels = torch.stack([clip.preprocess(image) for image in images])
    expected = torch.nn.functional.normalize(clip.encode_image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)


def test_embed_texts_matches_encode_text(clip):
    texts = ["a photo of a cat", "", "两只狗在雪地里奔跑", "🐈‍⬛ &amp; friends"]
    embeddings = clip.embed_texts(texts, batch_size=3)
    expected = torch.nn.functional.normalize(clip.encode_text(cliplab.tokenize(texts)), dim=-1).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    np.testing.assert_allclose(clip.embed_texts("a photo of a cat")[0], embeddings[0], atol=1e-6)


def test_embed_images_accepts_paths_and_names_bad_files(clip, images, tmp_path):
    images[0].save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    np.testing.assert_allclose(clip.embed_images([tmp_path / "a.png"]), clip.embed_images(images[:1]), atol=1e-6)
    with pytest.raises(cliplab.ImageLoadError, match="broken.jpg"):
        clip.embed_images([tmp_path / "broken.jpg"])


def test_template_sets():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert set(IMAGENET_TEMPLATES_7) <= set(IMAGENET_TEMPLATES)
    assert get_templates("a {} in the wild|a photo of a {}") == ("a {} in the wild", "a photo of a {}")
    with pytest.raises(ValueError, match="exactly one"):
        get_templates(["no placeholder"])


def test_classifier_weights_are_the_renormalised_mean_of_template_embeddings(clip):
    templates = ["a photo of a {}.", "a drawing of a {}.", "art of the {}."]
    classifier = ZeroShotClassifier.from_labels(clip, ["cat", "dog"], templates)
    for i, name in enumerate(["cat", "dog"]):
        mean = clip.embed_texts([t.format(name) for t in templates]).mean(axis=0)
        np.testing.assert_allclose(classifier.weights[i], mean / np.linalg.norm(mean), atol=1e-6)


def test_classify_ranks_by_probability_from_scaled_cosine(clip, images):
    classifier = ZeroShotClassifier.from_labels(clip, ["cat", "dog", "bus"], "photo")
    results = classifier.classify(clip, images, top_k=2)
    embeddings = clip.embed_images(images)
    logits = clip.logit_scale * embeddings @ classifier.weights.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for row, preds in zip(probs, results):
        assert [p.label for p in preds] == [classifier.class_names[j] for j in np.argsort(-row)[:2]]
        assert preds[0].probability == pytest.approx(row.max(), abs=1e-6)


def test_classifier_save_and_load_round_trip(clip, images, tmp_path):
    classifier = ZeroShotClassifier.from_labels(clip, ["cat", "dog", "bus"], "imagenet7")
    classifier.save(tmp_path / "classes.safetensors")
    restored = ZeroShotClassifier.load(tmp_path / "classes.safetensors")
    assert restored.class_names == classifier.class_names and restored.logit_scale == classifier.logit_scale
    np.testing.assert_array_equal(restored.weights, classifier.weights)
    assert [p.label for p in restored.classify(clip, images)[0]] == [
        p.label for p in classifier.classify(clip, images)[0]
    ]


def test_empty_class_name_is_refused(clip):
    with pytest.raises(ValueError, match="non-empty"):
        ZeroShotClassifier.from_labels(clip, ["cat", " "], "photo")


def test_pipeline_save_keeps_preprocessing(clip, tmp_path):
    clip.save(tmp_path / "again")
    again = cliplab.load(tmp_path / "again", device="cpu")
    assert again.preprocess.config == clip.preprocess.config


def test_embed_texts_grouped_by_length_keeps_input_order(clip):
    """Length grouping changes only which texts share a batch, never a result or its position."""
    texts = [
        "a cat",
        "a very long description of a small grey cat sitting on a red sofa in the sun",
        "dog",
        "",
        "two dogs running across a frosty field",
        "x " * 60,
    ]
    grouped = clip.embed_texts(texts, batch_size=2)
    one_by_one = np.concatenate([clip.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(grouped, one_by_one, atol=1e-5)
    assert clip.embed_texts([]).shape == (0, clip.embed_dim)
