"""Towers from other libraries (timm image towers, Hugging Face text towers) against the libraries' own
modules, OpenCLIP's loading of the export, tokenizer dispatch, fingerprints, reduced precision, and a
clear error for every bad input. The towers are tiny and random, written in the published formats
(tests/towers_fixtures.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from towers_fixtures import TIMM_ARCH, towers_config, write_text_tower, write_timm_weights

import cliplab
from cliplab.checkpoints import CheckpointError, read_checkpoint
from cliplab.model.towers import HeadConfig, HFTextConfig, TimmVisionConfig
from cliplab.model.towers.hf_tokenizer import HFTokenizer
from cliplab.tokenizer import Tokenizer

pytest.importorskip("timm")
pytest.importorskip("transformers")

TEXTS = [
    "a photo of a cat sitting on a red chair",
    "Two DOGS and a blue car, at night over the sea with many stars and a moon",
    "x",
    "  café   &amp; naïve  ",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The tiny towers, written once: timm weights, a BERT folder and a RoBERTa folder."""
    root = tmp_path_factory.mktemp("towers")
    write_timm_weights(root / "timm.safetensors")
    write_text_tower(root / "bert", "bert")
    write_text_tower(root / "roberta", "roberta")
    return root


def pixels(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- parity with the libraries


def test_timm_tower_features_equal_timms_own_model(root):
    import timm
    from safetensors.torch import load_file

    clip = cliplab.build(towers_config(root, text="native"), precision="fp32")
    reference = timm.create_model(TIMM_ARCH, pretrained=False)
    reference.load_state_dict(load_file(str(root / "timm.safetensors")))
    reference.reset_classifier(0, global_pool="avg")
    reference.eval()
    x = pixels()
    with torch.no_grad():
        want = reference(x)
        got = clip.model.visual.features(x)
        assert want.abs().mean() > 0.03  # features far from zero: the tolerance means something
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(clip.encode_image(x), clip.model.visual.head(want), atol=1e-5, rtol=1e-5)


def test_timm_weights_named_in_another_order_load_by_order_with_every_shape_checked(root, tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(str(root / "timm.safetensors"))
    order = cliplab.build(towers_config(root, text="native")).model.visual.trunk.state_dict()
    renamed = {f"_layer{i}.{name.split('.')[-1]}": tensors[name] for i, name in enumerate(order)}
    renamed["_fc.weight"], renamed["_fc.bias"] = tensors["classifier.weight"], tensors["classifier.bias"]
    torch.save(renamed, tmp_path / "renamed.pth")  # torch.save keeps the order (as efficientnet-pytorch files)
    base = towers_config(root, text="native")
    by_name = cliplab.build(base, precision="fp32")
    base.vision.pretrained, base.vision.weights_layout = str(tmp_path / "renamed.pth"), "ordered"
    by_order = cliplab.build(base, precision="fp32")
    x = pixels()
    torch.testing.assert_close(by_order.encode_image(x), by_name.encode_image(x), atol=0, rtol=0)

    first = next(iter(renamed))
    renamed[first] = renamed[first][:, :, :2]  # the stem convolution, cut
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError, match=rf"tensor '{first}' \(mapped in order onto 'conv_stem.weight'\)"):
        cliplab.build(base)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler", "end"])
def test_text_tower_features_and_ids_equal_transformers_own(root, kind, pooling):
    import transformers

    clip = cliplab.build(towers_config(root, vision="native", text=kind, pooling=pooling), precision="fp32")
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(str(root / kind))
    from open_clip.tokenizer import basic_clean, whitespace_clean  # OpenCLIP's clean-up of texts for HF tokenizers

    cleaned = [whitespace_clean(basic_clean(t)) for t in TEXTS]
    encoded = reference_tokenizer(cleaned, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    ids = clip.tokenize(TEXTS)
    assert torch.equal(ids, encoded.input_ids)
    assert ids.shape == (len(TEXTS), 16) and (ids[1] != clip.tokenizer.pad_token_id).all()  # one text was cut
    reference = transformers.AutoModel.from_pretrained(str(root / kind)).eval()  # with its pooler
    mask = encoded.attention_mask
    with torch.no_grad():
        out = reference(input_ids=encoded.input_ids, attention_mask=mask)
        hidden = out.last_hidden_state
        want = {
            "mean": (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
            "cls": hidden[:, 0],
            "pooler": out.pooler_output,
            "end": hidden[torch.arange(len(TEXTS)), mask.sum(1) - 1],
        }[pooling]
        got = clip.model.text.features(ids)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # each batch is computed only up to its longest text: a row alone gives the same features
        alone = torch.cat([clip.model.text.features(ids[i : i + 1]) for i in range(len(TEXTS))])
        torch.testing.assert_close(alone, got, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- tokenizer dispatch


def test_each_pipeline_tokenizes_with_its_own_text_towers_tokenizer(root, tmp_path):
    bert = cliplab.build(towers_config(root, text="bert"), precision="fp32")
    roberta = cliplab.build(towers_config(root, text="roberta"), precision="fp32")
    native = cliplab.build(towers_config(root, text="native"), precision="fp32")
    assert isinstance(bert.tokenizer, HFTokenizer) and isinstance(roberta.tokenizer, HFTokenizer)
    assert type(native.tokenizer) is Tokenizer
    assert bert.tokenize("a cat")[0, :2].tolist() == [2, bert.tokenizer.encode("a cat")[1]]
    assert roberta.tokenizer.pad_token_id == 1 and roberta.tokenize("a cat")[0, -1] == 1
    assert native.tokenize("a cat")[0, 0] == 49406
    for clip in (bert, roberta, native):
        want = F.normalize(clip.encode_text(clip.tokenize(TEXTS)), dim=-1).numpy()
        np.testing.assert_allclose(clip.embed_texts(TEXTS, batch_size=2), want, atol=1e-6)

    # the context length comes from the tower when the config leaves it out
    config = towers_config(root, text="roberta", context_length=0)
    built = cliplab.build(config)
    assert built.model.context_length == built.tokenizer.context_length == 40  # 42 positions, RoBERTa's offset 2

    # saved and loaded, the tokenizer follows the model; it tokenises without torch
    bert.save(tmp_path / "model")
    loaded = cliplab.load(tmp_path / "model", precision="fp32")
    assert isinstance(loaded.tokenizer, HFTokenizer) and torch.equal(loaded.tokenize(TEXTS), bert.tokenize(TEXTS))
    code = (
        "import sys, json; from cliplab.model.towers.hf_tokenizer import HFTokenizer; "
        f"b = HFTokenizer.from_folder({str(tmp_path / 'model' / 'tokenizer')!r}, 16).encode_batch({TEXTS!r}); "
        "assert 'torch' not in sys.modules; print(json.dumps([b.ids.tolist(), b.lengths.tolist()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env())
    ids, lengths = json.loads(out.stdout)
    assert ids == bert.tokenize(TEXTS).tolist() and lengths == [sum(1 for i in row if i != 0) for row in ids]


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


# --------------------------------------------------------------------------- checkpoints


def test_cliplab_format_round_trip_keeps_embeddings_tokenizer_and_fingerprint(root, tmp_path):
    clip = cliplab.build(towers_config(root, image_head=HeadConfig("mlp", dropout=0.1)), precision="fp32")
    clip.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "cliplab_config.json").read_text())
    assert saved["model"]["vision"]["type"] == "timm" and saved["model"]["text"]["hf_config"]["model_type"] == "bert"
    assert saved["tokenizer"] == {"kind": "huggingface", "folder": "tokenizer", "context_length": 16, "pad_token_id": 0}
    assert saved["preprocess"]["mean"] == [0.485, 0.456, 0.406]  # timm's config of the architecture
    loaded = cliplab.load(tmp_path / "model", precision="fp32")
    x = pixels()
    assert torch.equal(loaded.encode_image(x), clip.encode_image(x))
    assert np.array_equal(loaded.embed_texts(TEXTS), clip.embed_texts(TEXTS))
    assert loaded.identity.fingerprint == clip.identity.fingerprint
    assert loaded.preprocess.config == clip.preprocess.config


def test_a_model_config_file_is_a_checkpoint_built_the_same_every_time(root, tmp_path):
    shutil.copy(root / "timm.safetensors", tmp_path / "timm.safetensors")
    shutil.copytree(root / "bert", tmp_path / "towers" / "bert")
    (tmp_path / "model.toml").write_text(
        "embed_dim = 24\nquick_gelu = false\n\n[vision]\ntype = 'timm'\n"
        f"model_name = '{TIMM_ARCH}'\nimage_size = 64\npretrained = 'timm.safetensors'\nlicence = 'test-only'\n"
        "head = { type = 'mlp', dropout = 0.1 }\n\n"
        "[text]\ntype = 'hf'\nmodel_name = 'towers/bert'\npooling = 'mean'\ncontext_length = 16\n"
    )
    first = cliplab.load(tmp_path / "model.toml", precision="fp32")
    second = cliplab.load(tmp_path / "model.toml", precision="fp32")
    built = cliplab.build(towers_config(root, image_head=HeadConfig("mlp", dropout=0.1)), precision="fp32")
    assert first.identity.fingerprint == second.identity.fingerprint == built.identity.fingerprint
    assert np.array_equal(first.embed_texts(TEXTS), built.embed_texts(TEXTS))
    assert first.model.config.vision.licence == "test-only"
    assert read_checkpoint(tmp_path / "model.toml").source_format == "model-config"


COMBOS = {
    "timm+bert": dict(text="bert", pooling="mean", image_head="mlp", text_head="linear"),
    "timm+roberta": dict(
        text="roberta", pooling="cls", image_head=HeadConfig("linear", bias=True, dropout=0.2), text_head="mlp"
    ),
    "vit+bert": dict(vision="native", text="bert", pooling="pooler", text_head="mlp"),
    "timm+native": dict(text="native", image_head="linear"),
}


@pytest.mark.parametrize("combo", list(COMBOS))
def test_open_clip_export_loads_in_open_clip_with_the_same_embeddings(root, tmp_path, combo):
    open_clip = pytest.importorskip("open_clip")
    config = towers_config(root, **COMBOS[combo])
    clip = cliplab.build(config, precision="fp32")
    out = clip.save(tmp_path / "oc", format="open_clip")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    ids = clip.tokenize(TEXTS)
    assert torch.equal(tokenizer(TEXTS), ids)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    x = preprocess(image)[None]
    torch.testing.assert_close(x, clip.preprocess.batch([image]), atol=1e-6, rtol=0)
    x = torch.cat([x, pixels(2, config.vision.image_size)])
    with torch.no_grad():
        theirs_image, theirs_text = model.encode_image(x), model.encode_text(ids)
    ours_image, ours_text = clip.encode_image(x), clip.encode_text(ids)
    assert (ours_image - theirs_image).abs().max() <= 1e-5 and (ours_text - theirs_text).abs().max() <= 1e-5
    assert ours_text.abs().mean() > 0.005 and ours_image.abs().mean() > 0.005  # far above the tolerance
    # and cliplab reads the export back: the same model
    back = cliplab.load(out, precision="fp32")
    assert torch.equal(back.encode_image(x), ours_image) and torch.equal(back.encode_text(ids), ours_text)
    assert back.identity.fingerprint == clip.identity.fingerprint


def test_formats_that_cannot_hold_the_towers_refuse_with_the_reason_and_the_formats_that_can(root, tmp_path):
    clip = cliplab.build(towers_config(root), precision="fp32")
    for fmt in ("huggingface", "openai"):
        with pytest.raises(
            CheckpointError, match=r"timm image tower .*Hugging Face text tower .*'cliplab'.*'open_clip'"
        ):
            clip.save(tmp_path / fmt, format=fmt)
        assert not (tmp_path / fmt).exists()
    for config, reason in [
        (towers_config(root, pooling="end"), "no 'end' pooling"),
        (towers_config(root, text_head=HeadConfig("linear", bias=True)), "text projection has no bias"),
        (towers_config(root, image_head=HeadConfig("mlp", hidden_dim=7)), "48 hidden units with a bias"),
    ]:
        with pytest.raises(CheckpointError, match=reason + r".*Write it as 'cliplab'"):
            cliplab.build(config).save(tmp_path / "oc", format="open_clip")
        assert not (tmp_path / "oc").exists()


# --------------------------------------------------------------------------- bad input


def test_unknown_architectures_are_named_with_the_closest_known_ones(root, tmp_path):
    with pytest.raises(
        CheckpointError, match="unknown timm architecture 'tf_efficientnet_lite00'.*tf_efficientnet_lite0"
    ):
        cliplab.build(cliplab.CLIPConfig(embed_dim=8, vision=TimmVisionConfig("tf_efficientnet_lite00")))
    shutil.copytree(root / "bert", tmp_path / "berty")
    config = json.loads((tmp_path / "berty" / "config.json").read_text())
    (tmp_path / "berty" / "config.json").write_text(json.dumps({**config, "model_type": "berty"}))
    with pytest.raises(CheckpointError, match="unknown Hugging Face architecture 'berty'.*did you mean bert"):
        cliplab.build(cliplab.CLIPConfig(embed_dim=8, text=HFTextConfig(str(tmp_path / "berty"))))


def test_hub_sources_without_a_network_say_what_to_fetch_and_where_to_put_it(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, and no waiting for one
    text = cliplab.CLIPConfig(embed_dim=8, text=HFTextConfig("hf-hub:nobody/no-such-tower"))
    with pytest.raises(
        CheckpointError, match=r"could not get hf-hub:nobody/no-such-tower .*copy the files of https://"
    ):
        cliplab.build(text)
    vision = cliplab.CLIPConfig(embed_dim=8, vision=TimmVisionConfig(TIMM_ARCH, pretrained="timm"))
    with pytest.raises(CheckpointError, match=rf"could not get timm's pretrained weights for '{TIMM_ARCH}'"):
        cliplab.build(vision)
    with pytest.raises(CheckpointError, match="no installed Python package 'no_such_package'"):
        cliplab.build(cliplab.CLIPConfig(embed_dim=8, text=HFTextConfig("package:no_such_package/model")))


def test_a_context_longer_than_the_text_towers_positions_is_refused(root):
    with pytest.raises(CheckpointError, match="context_length 41 exceeds the roberta text tower's 40 positions"):
        cliplab.build(towers_config(root, vision="native", text="roberta", context_length=41))


def test_a_folder_without_its_tokenizer_files_is_named(root, tmp_path):
    shutil.copytree(root / "bert", tmp_path / "bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "bert" / name).unlink()
    with pytest.raises(CheckpointError, match=r"bert has no tokenizer files: .* needs tokenizer.json"):
        cliplab.build(towers_config(tmp_path, vision="native", text="bert"))
    cliplab.build(towers_config(root, vision="native")).save(tmp_path / "model")
    shutil.rmtree(tmp_path / "model" / "tokenizer")
    with pytest.raises(CheckpointError, match="text tower's tokenizer is missing.*no tokenizer files"):
        cliplab.load(tmp_path / "model")


def test_weights_that_do_not_fit_the_tower_name_the_first_mismatching_tensor(root, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(root / "timm.safetensors"))
    tensors["blocks.1.0.conv_pwl.weight"] = tensors["blocks.1.0.conv_pwl.weight"][:-1].contiguous()
    save_file(tensors, str(tmp_path / "timm.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'blocks.1.0.conv_pwl.weight' has shape \[\d+, "):
        cliplab.build(towers_config(tmp_path, text="native"))

    shutil.copytree(root / "bert", tmp_path / "bert")  # a text tower with one layer too few
    weights = load_file(str(tmp_path / "bert" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".layer.1." not in k}, str(tmp_path / "bert" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 16 tensor\(s\): encoder.layer.1"):
        cliplab.build(towers_config(tmp_path, vision="native", text="bert"))

    cliplab.build(towers_config(root)).save(tmp_path / "model")
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    saved["text.transformer.embeddings.word_embeddings.weight"] = saved[
        "text.transformer.embeddings.word_embeddings.weight"
    ][:, :-1].contiguous()
    save_file(saved, str(tmp_path / "model" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'text.transformer.embeddings.word_embeddings.weight' has shape"):
        cliplab.load(tmp_path / "model")


# --------------------------------------------------------------------------- fingerprints


def test_fingerprints_differ_for_different_towers_and_stay_unchanged_for_cliplabs_own(root):
    import hashlib

    def fingerprint(**changes) -> str:
        config = towers_config(root, **{k: v for k, v in changes.items() if k in ("text", "pooling", "context_length")})
        if "pool" in changes:
            config.vision.pool = changes["pool"]
        return cliplab.build(config).identity.fingerprint

    base = fingerprint()
    assert fingerprint() == base  # the same config builds the same model
    others = [
        fingerprint(pooling="cls"),
        fingerprint(pool="max"),
        fingerprint(context_length=12),
        fingerprint(text="roberta"),
    ]
    assert len({base, *others}) == 5

    # cliplab's own towers: the fingerprint is still the one stores recorded before towers existed
    from conftest import random_model

    native = cliplab.Pipeline(random_model(cliplab.get_preset("ViT-nano")), name="m")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(native.preprocess.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(native.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.float().contiguous().numpy())
    assert native.identity.fingerprint == digest.hexdigest()


def test_a_towers_fingerprint_follows_its_trunk_and_inputs_not_its_head(root):
    from cliplab.model.towers.fingerprint import tower_fingerprint

    clip = cliplab.build(towers_config(root))
    vision, text = tower_fingerprint(clip.model, "vision"), tower_fingerprint(clip.model, "text")
    assert vision != text
    with torch.no_grad():
        clip.model.visual.head.fc1.weight.add_(1.0)  # training a head does not invalidate cached trunk features
        clip.model.text.head.proj.weight.add_(1.0)
    assert (tower_fingerprint(clip.model, "vision"), tower_fingerprint(clip.model, "text")) == (vision, text)
    assert tower_fingerprint(clip.model, "vision", heads=True) != tower_fingerprint(
        cliplab.build(towers_config(root)).model, "vision", heads=True
    )
    with torch.no_grad():
        clip.model.visual.trunk.conv_stem.weight[0, 0, 0, 0] += 1e-3  # a trunk weight does
        clip.model.text.transformer.embeddings.word_embeddings.weight[5, 0] += 1e-3
    assert tower_fingerprint(clip.model, "vision") != vision and tower_fingerprint(clip.model, "text") != text
    other_preprocess = {**clip.preprocess.config.to_dict(), "interpolation": "bilinear"}
    assert tower_fingerprint(clip.model, "vision", other_preprocess) != tower_fingerprint(clip.model, "vision")
    shorter = cliplab.build(towers_config(root, context_length=12))
    fresh = cliplab.build(towers_config(root))
    assert tower_fingerprint(shorter.model, "text") != tower_fingerprint(fresh.model, "text")  # the tokenizer
    native = cliplab.build(towers_config(root, vision="native", text="native"))
    assert len({tower_fingerprint(native.model, "vision"), tower_fingerprint(native.model, "text")}) == 2


# --------------------------------------------------------------------------- inference and commands


def test_bf16_rows_stay_within_cosine_0999_of_fp32(root):
    config = towers_config(root)
    fp32, bf16 = cliplab.build(config, precision="fp32"), cliplab.build(config, precision="bf16")
    x = pixels(4)
    image = F.cosine_similarity(bf16.encode_image(x), fp32.encode_image(x))
    text = F.cosine_similarity(bf16.encode_text(bf16.tokenize(TEXTS)), fp32.encode_text(fp32.tokenize(TEXTS)))
    print("min cosine bf16 vs fp32: image", float(image.min()), "text", float(text.min()))
    assert image.min() >= 0.999 and text.min() >= 0.999
    assert next(bf16.inference_model.visual.trunk.conv_stem.parameters()).dtype == torch.bfloat16
    assert bf16.inference_model.visual.trunk.bn1.weight.dtype == torch.float32  # norms stay float32
    assert bf16.model.visual.trunk.conv_stem.weight.dtype == torch.float32  # the master is untouched
    from cliplab.inference import _fused_linear_available
    from cliplab.model.towers.inference import OneDNNLinear

    if _fused_linear_available():  # the text tower's linear layers run through oneDNN
        assert isinstance(bf16.inference_model.text.transformer.encoder.layer[0].intermediate.dense, OneDNNLinear)


def test_commands_run_unchanged_on_a_towers_model(root, tmp_path, capsys):
    from cliplab.cli import main

    cliplab.build(towers_config(root), precision="fp32").save(tmp_path / "model")
    model = str(tmp_path / "model")
    images = []
    (tmp_path / "pics").mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        images.append(str(tmp_path / "pics" / f"{i}.png"))
        Image.new("RGB", (70, 50), color).save(images[-1])
    assert main(["classify", *images, "--labels", "a cat,a dog", "--model", model, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["embed", "--texts", "a cat", "a dog", "--model", model, "--out", str(tmp_path / "t.npy")]) == 0
    assert np.load(tmp_path / "t.npy").shape == (2, 24)
    captions = tmp_path / "captions.csv"
    captions.write_text("id,text\nc1,a red square\nc2,a green circle\n")
    store = str(tmp_path / "store")
    assert main(["index", str(tmp_path / "pics"), "--store", store, "--captions", str(captions), "--model", model]) == 0
    capsys.readouterr()
    assert main(["search", store, "a red square", "--target", "text", "--json"]) == 0  # the store's model
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["key"] == "text:c1" and hits[0]["score"] > 0.9999  # the same text, embedded the same way
    assert main(["search", store, "a red square", "--json", "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3
    assert main(["info", model]) == 0
    info = capsys.readouterr().out
    assert f"timm {TIMM_ARCH}" in info and "Hugging Face bert (2 layers, width 32), mean pooling" in info
    assert main(["convert", model, str(tmp_path / "oc"), "--to", "open_clip"]) == 0
    assert (tmp_path / "oc" / "open_clip_config.json").is_file() and (tmp_path / "oc" / "tokenizer.json").is_file()
    assert main(["convert", model, str(tmp_path / "x"), "--to", "huggingface"]) == 1
    assert "cannot write this model in the huggingface format" in capsys.readouterr().err


def test_onnx_export_of_towers_gives_the_torch_features(root, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    clip = cliplab.build(towers_config(root, text="roberta"), precision="fp32")
    folder = clip.export_onnx(tmp_path / "onnx")
    settings = json.loads((folder / "cliplab_onnx.json").read_text())
    assert settings["tokenizer"]["pad_id"] == 1 and settings["tokenizer"]["kind"] == "huggingface"
    tokenizer = HFTokenizer.from_folder(folder / "tokenizer", settings["tokenizer"]["context_length"])
    ids = tokenizer.encode_batch(TEXTS).ids
    assert np.array_equal(ids, clip.tokenize(TEXTS).numpy())
    text = ort.InferenceSession(str(folder / "text_encoder.onnx")).run(None, {"token_ids": ids})[0]
    np.testing.assert_allclose(text, clip.encode_text(torch.from_numpy(ids)).numpy(), atol=1e-4)
    x = pixels()
    image = ort.InferenceSession(str(folder / "image_encoder.onnx")).run(None, {"pixels": x.numpy()})[0]
    np.testing.assert_allclose(image, clip.encode_image(x).numpy(), atol=1e-4)


def test_torch_free_text_queries_cover_a_hugging_face_text_tower(root, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from cliplab.fast_queries import OnnxTextQueries, save_text_queries

    monkeypatch.setenv("CLIPLAB_HOME", str(tmp_path / "home"))
    clip = cliplab.build(towers_config(root), precision="fp32")
    assert save_text_queries(clip) is not None
    fast = OnnxTextQueries.open(clip.identity.fingerprint)
    assert fast is not None
    np.testing.assert_allclose(fast.embed_texts(TEXTS), clip.embed_texts(TEXTS), atol=1e-5)


def test_training_starts_from_a_towers_config_and_saves_the_towers_with_their_tokenizer(root, tmp_path):
    from cliplab.train.config import load_config
    from cliplab.train.loop import train

    shutil.copy(root / "timm.safetensors", tmp_path / "timm.safetensors")
    shutil.copytree(root / "bert", tmp_path / "bert")
    (tmp_path / "towers.toml").write_text(
        f"embed_dim = 24\n[vision]\ntype = 'timm'\nmodel_name = '{TIMM_ARCH}'\nimage_size = 64\n"
        "pretrained = 'timm.safetensors'\n[text]\ntype = 'hf'\nmodel_name = 'bert'\ncontext_length = 16\n"
    )
    rows = ["image,caption"]
    for i, color in enumerate(["red", "green", "blue", "orange"] * 2):
        Image.new("RGB", (48, 40), color).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,a {color} square")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train.toml").write_text(
        "[model]\ninit_from = 'towers.toml'\n[data]\ntrain = [['pairs.csv', 1.0]]\nworkers = 1\n"
        "[train]\nbatch_size = 4\nsteps = 2\nwarmup_steps = 1\nprecision = 'fp32'\nlock_image = true\nlog_every = 1\n"
    )
    start = cliplab.load(tmp_path / "towers.toml", precision="fp32")
    result = train(load_config(tmp_path / "train.toml"), tmp_path / "run", progress=False)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    trained = cliplab.load(tmp_path / "run" / "model", precision="fp32")
    assert isinstance(trained.tokenizer, HFTokenizer) and torch.equal(trained.tokenize(TEXTS), start.tokenize(TEXTS))
    before, after = start.model.state_dict(), trained.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual.trunk."))  # locked
    assert not torch.equal(before["visual.head.proj.weight"], after["visual.head.proj.weight"])  # its head learns
    assert not torch.equal(before["text.head.proj.weight"], after["text.head.proj.weight"])  # trained
