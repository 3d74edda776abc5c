"""The model itself: architecture facts from the paper and behaviour of the towers."""

import math

import pytest
import torch
from conftest import random_model, random_pixels, random_tokens

from cliplab.model import CLIP, get_preset, preset_names


def test_vit_b32_has_the_published_parameter_count():
    assert sum(p.numel() for p in CLIP(get_preset("ViT-B-32")).parameters()) == 151_277_313


@pytest.mark.parametrize(
    "name,image_size", [("RN50x4", 288), ("RN50x16", 384), ("RN50x64", 448), ("ViT-L/14@336px", 336), ("ViT-B/32", 224)]
)
def test_presets_carry_the_published_input_resolution(name, image_size):
    assert get_preset(name).vision.image_size == image_size


def test_every_preset_has_consistent_shapes():
    for name in preset_names():
        config = get_preset(name)
        assert config.text.width % config.text.heads == 0, name
        width = config.vision.width * 32 if config.vision.is_resnet else config.vision.width
        assert width % config.vision.heads == 0, name


def test_logit_scale_starts_at_one_over_0_07():
    model = CLIP(get_preset("ViT-nano"))
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-6)


def test_small_models_produce_embed_dim_features(small_config):
    model = random_model(small_config)
    with torch.no_grad():
        image = model.encode_image(random_pixels(2, small_config.vision.image_size))
        text = model.encode_text(random_tokens(3))
    assert image.shape == (2, small_config.embed_dim) and text.shape == (3, small_config.embed_dim)
    assert torch.isfinite(image).all() and torch.isfinite(text).all()


def test_text_feature_is_read_at_end_token_and_ignores_what_follows(small_config):
    """Under the causal mask, tokens after EOT cannot change the feature read at EOT."""
    model = random_model(small_config)
    ids = random_tokens(4, seed=1)
    changed = ids.clone()
    for row in changed:
        eot = int(row.argmax())
        row[eot + 1 :] = torch.randint(1, 1000, (len(row) - eot - 1,))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(changed), rtol=0, atol=1e-6)


def test_shorter_sequences_give_the_same_features():
    """Truncating the padding (a sequence cut after its EOT) leaves features unchanged."""
    model = random_model(get_preset("ViT-nano"))
    ids = random_tokens(3, seed=2)[1:]
    longest = int(ids.argmax(dim=-1).max()) + 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), model.encode_text(ids[:, :longest]), rtol=0, atol=1e-5)


def test_forward_gives_scaled_cosine_logits():
    model = random_model(get_preset("ViT-nano"))
    pixels, ids = random_pixels(2, 64), random_tokens(3)
    with torch.no_grad():
        logits_per_image, logits_per_text = model(pixels, ids)
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
    torch.testing.assert_close(logits_per_image, model.logit_scale.exp() * image @ text.T)
    torch.testing.assert_close(logits_per_text, logits_per_image.T)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = random_model(get_preset("ViT-nano")).train()
    pixels, ids = random_pixels(2, 64), random_tokens(2)

    def grads():
        model.zero_grad()
        logits, _ = model(pixels, ids)
        logits.sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], rtol=1e-4, atol=1e-6)


def test_too_long_token_sequences_are_refused():
    model = CLIP(get_preset("ViT-nano"))
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
