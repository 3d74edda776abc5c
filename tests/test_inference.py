"""The fast inference path (bf16, fused CPU blocks) against the float32 path, precision choice, ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_CONFIGS, random_model, random_pixels, random_tokens

import cliplab
from cliplab import inference
from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.inference import FusedBlock, resolve_precision
from cliplab.model import get_preset
from cliplab.model.layers import ResidualAttentionBlock

fused_linear = pytest.mark.skipif(not inference._fused_linear_available(), reason="needs oneDNN (mkldnn)")


def test_resolve_precision(monkeypatch):
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "cuda") == torch.float16
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", "cpu")


def test_auto_follows_the_cpu_flags():
    cpuinfo = inference.Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    native = ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()
    assert (resolve_precision("auto", "cpu") == torch.bfloat16) == native


@fused_linear
@pytest.mark.parametrize("quick_gelu", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_block_computes_the_block_in_float32(quick_gelu, causal):
    """Same function as ResidualAttentionBlock (QuickGELU's 1.702 folded into the weights), exactly in fp32."""
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 4, quick_gelu=quick_gelu).eval()
    x = torch.randn(3, 11, 64)
    with torch.inference_mode():
        expected = block(x, causal=causal)
        fused = FusedBlock(block, torch.float32)(x, causal=causal)
    torch.testing.assert_close(fused, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_bf16_features_match_fp32(name):
    """Every image and text row: cosine >= 0.999 to the float32 path; outputs float32, model left alone."""
    model = random_model(SMALL_CONFIGS[name]())
    exact = cliplab.Pipeline(model, device="cpu", precision="fp32")
    fast = cliplab.Pipeline(model, device="cpu", precision="bf16")
    assert exact.inference_model is model and fast.inference_model is not model
    if inference._fused_linear_available():
        assert any(isinstance(m, FusedBlock) for m in fast.inference_model.modules())
    pixels, ids = random_pixels(6, model.image_size), random_tokens(6)
    for encode in ("encode_image", "encode_text"):
        data = pixels if encode == "encode_image" else ids
        ours, reference = getattr(fast, encode)(data), getattr(exact, encode)(data)
        assert ours.dtype == torch.float32
        assert F.cosine_similarity(ours, reference).min() >= 0.999, encode
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_embeddings_are_normalised_float32_and_save_writes_float32(tmp_path):
    model = random_model(get_preset("ViT-nano"))
    fast = cliplab.Pipeline(model, device="cpu", precision="bf16")
    vectors = fast.embed_texts(["a cat", "a photo of a dog on a sunny day", ""])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    fast.save(tmp_path / "m", format="cliplab")
    again = cliplab.load(tmp_path / "m", device="cpu", precision="fp32")
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name


def test_refresh_follows_weight_changes():
    model = random_model(get_preset("ViT-nano"))
    pipeline = cliplab.Pipeline(model, device="cpu", precision="bf16")
    ids = random_tokens(2)
    before = pipeline.encode_text(ids)
    with torch.no_grad():
        model.text_projection.mul_(-1)
    pipeline.refresh()
    torch.testing.assert_close(pipeline.encode_text(ids), -before)


def test_precision_on_the_command_line(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    texts = ["a cat", "a dog"]
    for precision in ("fp32", "bf16", "auto"):
        assert (
            main(
                [
                    "embed",
                    "--texts",
                    *texts,
                    "--out",
                    str(tmp_path / f"{precision}.npy"),
                    "--model",
                    str(tmp_path / "model"),
                    "--precision",
                    precision,
                ]
            )
            == 0
        )
    exact, fast = np.load(tmp_path / "fp32.npy"), np.load(tmp_path / "bf16.npy")
    assert (exact * fast).sum(axis=1).min() >= 0.999
    with pytest.raises(SystemExit):
        main(["embed", "--texts", "a", "--out", str(tmp_path / "x.npy"), "--precision", "int4"])


@pytest.mark.parametrize("name", ["vit-quickgelu", "rn-gelu"])
def test_onnx_export_matches_fp32(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = random_model(SMALL_CONFIGS[name]())
    pipeline = cliplab.Pipeline(model, device="cpu", precision="fp32")
    folder = pipeline.export_onnx(tmp_path / "onnx")
    settings = json.loads((folder / "cliplab_onnx.json").read_text())
    assert settings["preprocess"]["image_size"] == model.image_size and settings["tokenizer"]["context_length"] == 77
    pixels, ids = random_pixels(5, model.image_size, seed=1), random_tokens(7, seed=1)
    ids[0] = 0  # a short text first: the graph must read each row at its own end token
    ids[0, :3] = torch.tensor([49406, 320, 49407])
    image = ort.InferenceSession(str(folder / settings["image_encoder"])).run(None, {"pixels": pixels.numpy()})[0]
    text = ort.InferenceSession(str(folder / settings["text_encoder"])).run(None, {"token_ids": ids.numpy()})[0]
    np.testing.assert_allclose(image, pipeline.encode_image(pixels).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(text, pipeline.encode_text(ids).numpy(), atol=1e-4, rtol=0)


def test_convert_to_onnx_on_the_command_line(tmp_path):
    pytest.importorskip("onnx")
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    assert main(["convert", str(tmp_path / "model"), str(tmp_path / "onnx"), "--to", "onnx"]) == 0
    assert {p.name for p in (tmp_path / "onnx").iterdir()} == {
        "image_encoder.onnx",
        "text_encoder.onnx",
        "cliplab_onnx.json",
    }


def test_batched_preprocessing_equals_per_image_and_draft_is_close(tmp_path):
    """The threaded, vectorised batch gives the per-image numbers exactly; draft JPEG decoding is opt-in and close."""
    from PIL import Image

    from cliplab.images import load_image
    from cliplab.preprocess import DRAFT_FACTOR, Preprocessor

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), np.ones((40, 40, 1), dtype=np.uint8))
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth).save(path, quality=95)  # 1280 x 960
    images = [str(path), Image.fromarray(smooth[:700, :500])]
    exact = Preprocessor(image_size=64)
    per_image = torch.stack([exact(image) for image in images])
    for threads in (1, 2, 3):  # decoded in threads or not, the numbers are the same
        assert torch.equal(exact.batch(images, threads=threads), per_image)
    assert exact.draft_size is None and load_image(path).size == (1280, 960)
    draft = Preprocessor(image_size=64, draft=True)
    decoded = load_image(path, draft.draft_size)
    assert min(decoded.size) >= DRAFT_FACTOR * 64 and decoded.size[0] < 1280
    reduced = draft.batch(images)
    assert torch.equal(reduced[1], per_image[1])  # PIL images are not re-decoded
    assert F.cosine_similarity(reduced[0].flatten(), per_image[0].flatten(), dim=0) > 0.99
