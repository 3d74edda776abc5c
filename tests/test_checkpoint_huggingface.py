"""Hugging Face (transformers) CLIP folders: write, read, and parity with transformers itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from cliplab.checkpoints.base import CheckpointError  # noqa: E402
from cliplab.checkpoints.huggingface import (  # noqa: E402
    is_huggingface_folder,
    read_huggingface,
    write_huggingface,
)
from cliplab.model import CLIP, CLIPConfig, TextConfig, VisionConfig, get_preset  # noqa: E402

TOL = 1e-5
SOT, EOT = 49406, 49407


def tiny_quick_gelu_config(vocab_size: int = 49408) -> CLIPConfig:
    """A small ViT CLIP with QuickGELU, uneven head counts and a short context."""
    return CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, layers=2, width=64, patch_size=8, heads=2, mlp_ratio=2.0),
        text=TextConfig(context_length=20, vocab_size=vocab_size, width=48, heads=3, layers=2, mlp_ratio=3.0),
        quick_gelu=True,
    )


def random_model(config: CLIPConfig, seed: int = 0) -> CLIP:
    """A cliplab CLIP whose every parameter (LayerNorms and biases included) is random."""
    torch.manual_seed(seed)
    model = CLIP(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def token_ids(n: int, context_length: int, vocab_size: int = 49408, seed: int = 1) -> torch.Tensor:
    """``[sot, random ids..., eot, 0, 0, ...]`` rows of different lengths, the top two ids being
    sot and eot as in OpenAI's vocabulary."""
    sot, eot = vocab_size - 2, vocab_size - 1
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, context_length, dtype=torch.long)
    for row in range(n):
        length = 1 + row * (context_length - 3) // max(n - 1, 1)  # 1 .. context_length - 2 tokens
        ids[row, 0] = sot
        ids[row, 1 : 1 + length] = torch.randint(1, sot, (length,), generator=g)
        ids[row, 1 + length] = eot
    return ids


def pooled(output) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features, older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def hf_features(model, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return pooled(model.get_image_features(pixel_values=pixels)), pooled(model.get_text_features(input_ids=ids))


def cliplab_features(model: CLIP, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(ids)


def inputs_for(config: CLIPConfig, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = config.vision.image_size
    pixels = torch.randn(3, 3, n, n, generator=g)
    return pixels, token_ids(4, config.text.context_length, config.text.vocab_size, seed=seed)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- cliplab -> transformers


@pytest.fixture(scope="module")
def nano_folder(tmp_path_factory) -> tuple[Path, CLIP]:
    config = get_preset("ViT-nano")
    model = random_model(config)
    folder = tmp_path_factory.mktemp("hf_nano")
    write_huggingface(model.state_dict(), config, folder)
    return folder, model


@pytest.mark.parametrize("which", ["ViT-nano", "tiny-quick-gelu", "tiny-small-vocab"])
def test_write_then_transformers_matches(which, nano_folder, tmp_path):
    if which == "ViT-nano":
        folder, model = nano_folder
        config = model.config
    else:
        config = tiny_quick_gelu_config(49408 if which == "tiny-quick-gelu" else 1000)
        model = random_model(config, seed=3)
        folder = tmp_path / which
        write_huggingface(model.state_dict(), config, folder)

    assert is_huggingface_folder(folder)
    hf, info = transformers.CLIPModel.from_pretrained(folder, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.text_config.hidden_act == ("quick_gelu" if config.quick_gelu else "gelu")
    assert hf.config.vision_config.hidden_act == hf.config.text_config.hidden_act
    assert torch.equal(hf.logit_scale.detach(), model.logit_scale.detach())

    pixels, ids = inputs_for(config)
    assert (ids == 0).any(), "the ids must contain padding after the end-of-text token"
    hf_image, hf_text = hf_features(hf, pixels, ids)
    image, text = cliplab_features(model, pixels, ids)
    assert max_diff(hf_image, image) <= TOL
    assert max_diff(hf_text, text) <= TOL

    # The text tower pools at the end-of-text token, whichever id the vocabulary gives it.
    assert hf.config.text_config.eos_token_id == config.text.vocab_size - 1

    # The tokenizer files exist only for OpenAI's vocabulary.
    assert (folder / "vocab.json").is_file() == (config.text.vocab_size == 49408)


def test_written_folder_reads_back_exactly(nano_folder):
    folder, model = nano_folder
    ckpt = read_huggingface(folder)
    assert ckpt.source_format == "huggingface"
    assert ckpt.config == model.config
    assert ckpt.notes == []
    expected = model.state_dict()
    assert ckpt.state_dict.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(ckpt.state_dict[key], tensor), key
    assert ckpt.preprocess == {
        "image_size": 64,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def test_written_config_and_preprocessor_load_in_transformers(nano_folder, tmp_path):
    folder, model = nano_folder
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == "clip" and raw["architectures"] == ["CLIPModel"]
    assert raw["text_config"]["eos_token_id"] == EOT and raw["text_config"]["bos_token_id"] == SOT
    config = transformers.CLIPConfig.from_pretrained(folder)
    assert config.projection_dim == model.config.embed_dim
    assert config.vision_config.image_size == 64 and config.vision_config.patch_size == 8
    assert config.text_config.intermediate_size == 512 and config.text_config.layer_norm_eps == 1e-5

    processor = transformers.CLIPImageProcessor.from_pretrained(folder)
    assert processor.crop_size["height"] == processor.crop_size["width"] == 64
    assert processor.size["shortest_edge"] == 64

    # Custom preprocessing settings survive a round trip.
    pre = {
        "image_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    out = tmp_path / "custom"
    write_huggingface(model.state_dict(), model.config, out, preprocess=pre)
    raw_pre = json.loads((out / "preprocessor_config.json").read_text())
    assert raw_pre["resample"] == 2 and raw_pre["do_center_crop"] is False
    assert raw_pre["size"] == {"height": 64, "width": 64}
    assert read_huggingface(out).preprocess == pre
    assert list(transformers.CLIPImageProcessor.from_pretrained(out).image_mean) == [0.5, 0.5, 0.5]


# --------------------------------------------------------------------------- transformers -> cliplab


def random_hf_model(hidden_act: str = "quick_gelu", seed: int = 4, **text_overrides):
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=192,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=24,
            hidden_act=hidden_act,
            **text_overrides,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=160,
            num_attention_heads=3,
            num_hidden_layers=2,
            image_size=40,
            patch_size=8,
            hidden_act=hidden_act,
        ),
        projection_dim=40,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # transformers initialises LayerNorms to 1/0 and biases to 0: perturb all
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def assert_cliplab_matches_hf(folder: Path, hf) -> tuple[CLIP, float, float]:
    ckpt = read_huggingface(folder)
    assert ckpt.source_format == "huggingface"
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values())
    model = CLIP(ckpt.config).eval()
    model.load_state_dict(ckpt.state_dict)  # strict
    pixels, ids = inputs_for(ckpt.config, seed=5)
    hf_image, hf_text = hf_features(hf, pixels, ids)
    image, text = cliplab_features(model, pixels, ids)
    d_image, d_text = max_diff(hf_image, image), max_diff(hf_text, text)
    assert d_image <= TOL and d_text <= TOL
    return model, d_image, d_text


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_read_transformers_safetensors(hidden_act, tmp_path):
    hf = random_hf_model(hidden_act)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert is_huggingface_folder(tmp_path)
    model, _, _ = assert_cliplab_matches_hf(tmp_path, hf)
    config = model.config
    assert config.quick_gelu == (hidden_act == "quick_gelu")
    assert (config.embed_dim, config.vision.width, config.vision.heads, config.vision.layers) == (40, 48, 3, 2)
    assert (config.vision.image_size, config.vision.patch_size) == (40, 8)
    assert (config.text.width, config.text.heads, config.text.context_length) == (64, 4, 24)
    assert int(config.vision.width * config.vision.mlp_ratio) == 160
    assert int(config.text.width * config.text.mlp_ratio) == 192


def test_activation_is_respected(tmp_path):
    """Same weights, different activation: cliplab follows the config and the features differ."""
    quick, exact = random_hf_model("quick_gelu", seed=6), random_hf_model("gelu", seed=6)
    quick.save_pretrained(tmp_path / "quick")
    exact.save_pretrained(tmp_path / "exact")
    m_quick, _, _ = assert_cliplab_matches_hf(tmp_path / "quick", quick)
    m_exact, _, _ = assert_cliplab_matches_hf(tmp_path / "exact", exact)
    pixels, ids = inputs_for(m_quick.config, seed=7)
    assert max_diff(cliplab_features(m_quick, pixels, ids)[0], cliplab_features(m_exact, pixels, ids)[0]) > 1e-4


def test_read_pytorch_bin_and_legacy_buffers(tmp_path):
    """pytorch_model.bin (loaded weights-only), with the position_ids buffers old versions saved."""
    hf = random_hf_model("quick_gelu", seed=8)
    hf.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(24)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(26)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert is_huggingface_folder(tmp_path)
    assert_cliplab_matches_hf(tmp_path, hf)


def test_read_sharded_half_precision_and_preprocessor(tmp_path):
    hf = random_hf_model("gelu", seed=9)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert is_huggingface_folder(tmp_path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 40},
        crop_size={"height": 40, "width": 40},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(tmp_path)
    _, _, _ = assert_cliplab_matches_hf(tmp_path, hf)
    ckpt = read_huggingface(tmp_path)
    assert ckpt.preprocess == {
        "image_size": 40,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }

    # Half-precision weights are converted to float32 and the conversion is noted.
    half = tmp_path / "half"
    hf.half().save_pretrained(half)
    ckpt = read_huggingface(half)
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values())
    assert any("float16" in note for note in ckpt.notes)
    assert any("preprocessor_config.json" in note for note in ckpt.notes)


def test_legacy_eos_and_missing_defaults(tmp_path):
    """Old configs (eos_token_id 2, sub-config fields left at transformers' defaults) still read."""
    hf = random_hf_model("quick_gelu", seed=10, eos_token_id=2)
    hf.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key in ("hidden_act", "layer_norm_eps", "vocab_size"):  # both transformers defaults
        raw["text_config"].pop(key, None)
        raw["vision_config"].pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert_cliplab_matches_hf(tmp_path, hf)
    ckpt = read_huggingface(tmp_path)
    assert any("omits" in note and "hidden_act" in note for note in ckpt.notes)


# --------------------------------------------------------------------------- tokenizer


SENTENCES = [
    "a photo of a cat.",
    "Don't STOP   me now!!",
    "naïve café — 1234 ünïcödé",
    "A diagram of CLIP's two towers (image & text), 2021",
    "a photo of a dog 🐶",
]


def reference_ids(texts: list[str]) -> list[list[int]]:
    """Token ids without padding, from cliplab's tokenizer when present, else open_clip's."""
    try:
        from cliplab.tokenizer import tokenize
    except ImportError:
        open_clip = pytest.importorskip("open_clip")
        tokenize = open_clip.tokenize
    batch = tokenize(texts)
    return [row[row != 0].tolist() for row in batch]


def test_written_tokenizer_matches_clip_tokenizer(nano_folder):
    folder, _ = nano_folder
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    assert tokenizer.bos_token_id == SOT and tokenizer.eos_token_id == EOT
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    hf_ids = tokenizer(SENTENCES)["input_ids"]
    assert hf_ids == reference_ids(SENTENCES)
    open_clip = pytest.importorskip("open_clip")
    assert hf_ids == [row[row != 0].tolist() for row in open_clip.tokenize(SENTENCES)]

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == SOT and vocab["<|endoftext|>"] == EOT
    assert merges[0].startswith("#version") and len(merges) == 1 + 48894


def test_tokenizer_and_model_agree_end_to_end(nano_folder):
    """Ids from the written tokenizer, padded the transformers way (with <|endoftext|>), give the
    same text features in transformers as cliplab's zero-padded ids do in cliplab."""
    folder, model = nano_folder
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    hf = transformers.CLIPModel.from_pretrained(folder).eval()
    batch = tokenizer(SENTENCES, padding="max_length", max_length=77, return_tensors="pt")
    padded_with_zeros = batch["input_ids"].clone()
    for row in padded_with_zeros:
        first_eot = int((row == EOT).nonzero()[0])
        row[first_eot + 1 :] = 0
    with torch.no_grad():
        hf_text = pooled(hf.get_text_features(input_ids=batch["input_ids"]))
        text = model.encode_text(padded_with_zeros)
    assert max_diff(hf_text, text) <= TOL


# --------------------------------------------------------------------------- errors


def test_not_a_clip_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    safetensors_torch.save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    assert not is_huggingface_folder(tmp_path)
    with pytest.raises(CheckpointError, match="bert"):
        read_huggingface(tmp_path)


def test_not_a_folder_or_no_config(tmp_path):
    assert not is_huggingface_folder(tmp_path / "missing")
    assert not is_huggingface_folder(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        read_huggingface(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="config.json"):
        read_huggingface(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_huggingface_folder(tmp_path)
    with pytest.raises(CheckpointError, match="config.json"):
        read_huggingface(tmp_path)


def test_missing_weights_file(nano_folder, tmp_path):
    folder, _ = nano_folder
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    assert not is_huggingface_folder(tmp_path)
    with pytest.raises(CheckpointError, match="no weights file.*model.safetensors"):
        read_huggingface(tmp_path)


def test_missing_shard(tmp_path):
    hf = random_hf_model(seed=11)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(CheckpointError, match=f"{shard}.*missing"):
        read_huggingface(tmp_path)


def _rewrite_weights(src: Path, dst: Path, edit) -> None:
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(src / name, dst / name)
    tensors = safetensors_torch.load_file(str(src / "model.safetensors"))
    edit(tensors)
    safetensors_torch.save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_wrong_shape_names_the_key(nano_folder, tmp_path):
    folder, _ = nano_folder

    def edit(t):
        t["text_projection.weight"] = torch.zeros(100, 128)

    _rewrite_weights(folder, tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"text_projection\.weight.*\[100, 128\].*\[128, 128\]"):
        read_huggingface(tmp_path)


def test_missing_and_unexpected_keys_are_listed(nano_folder, tmp_path):
    folder, _ = nano_folder

    def edit(t):
        del t["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
        t["vision_model.encoder.layers.9.mlp.fc1.weight"] = torch.zeros(1)

    _rewrite_weights(folder, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        read_huggingface(tmp_path)
    message = str(err.value)
    assert "missing" in message and "layers.1.self_attn.k_proj.weight" in message
    assert "unexpected" in message and "layers.9.mlp.fc1.weight" in message


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda c: c["text_config"].update(hidden_act="gelu_new"), "hidden_act 'gelu_new'"),
        (lambda c: c["vision_config"].update(layer_norm_eps=1e-6), "layer_norm_eps"),
        (lambda c: c["vision_config"].update(hidden_act="quick_gelu"), "one activation for both towers"),
        (lambda c: c["vision_config"].update(image_size=[32, 64]), "not square"),
    ],
    ids=["activation", "layer-norm-eps", "mixed-activations", "non-square"],
)
def test_unsupported_configs(edit, pattern, nano_folder, tmp_path):
    folder, _ = nano_folder
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=pattern):
        read_huggingface(tmp_path)


class _Payload:
    """Any non-tensor object: a weights-only load must refuse to unpickle it."""


def test_pickle_with_code_is_refused(nano_folder, tmp_path):
    folder, _ = nano_folder
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    torch.save({"logit_scale": torch.zeros(()), "payload": _Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        read_huggingface(tmp_path)


def test_write_rejects_resnet_and_mismatched_state_dicts(nano_folder, tmp_path):
    config = get_preset("RN-nano")
    with torch.device("meta"):
        state = CLIP(config).state_dict()
    with pytest.raises(CheckpointError, match="Vision Transformer image towers only.*OpenCLIP"):
        write_huggingface(state, config, tmp_path / "rn")
    assert not (tmp_path / "rn").exists()

    _, model = nano_folder
    state = dict(model.state_dict())
    state["visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"visual\.proj"):
        write_huggingface(state, model.config, tmp_path / "bad")
    del state["visual.proj"]
    with pytest.raises(CheckpointError, match=r"missing.*visual\.proj"):
        write_huggingface(state, model.config, tmp_path / "bad")
    with pytest.raises(CheckpointError, match="image_size"):
        write_huggingface(model.state_dict(), model.config, tmp_path / "bad", preprocess={"image_size": 32})
