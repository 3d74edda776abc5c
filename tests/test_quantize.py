"""int8 inference (cliplab.quantize): quality against fp32 for every tower kind, calibration files, the
command line, the CPU fallback, and the layers' arithmetic against float references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_CONFIGS, random_model, random_pixels, random_tokens
from PIL import Image

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.model import get_preset
from cliplab.model.layers import ResidualAttentionBlock
from cliplab.quantize import Calibration, calibration_path, cpu, int8_summary
from cliplab.quantize.layers import Int8Block, Int8Conv2d, Int8Linear, quantize_uint8, uint8_params

int8_cpu = pytest.mark.skipif(cpu.int8_unavailable("cpu") is not None, reason="needs a CPU with VNNI or AMX")
pytestmark = int8_cpu

CAPTIONS = [
    "a photo of a cat",
    "a red bicycle leaning on a wall",
    "two dogs running in the snow",
    "an emoji of a smiling face",
    "a drawing of a house with a garden",
    "city skyline at night",
    "a bowl of soup",
    "an old wooden boat on a lake at dawn",
]


def sample_images(n: int, seed: int, size: int = 96) -> list[Image.Image]:
    """Smooth random pictures (blobs of colour, like downscaled photos rather than noise)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        coarse = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        images.append(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    return images


def texts(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = " ".join(CAPTIONS).split()
    return [" ".join(rng.choice(words, int(rng.integers(2, 12)))) for _ in range(24)]


def cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float()).min())


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_int8_features_stay_close_to_fp32_for_every_tower_kind(name):
    """Calibrated on one set of images and texts, measured on another: every row's cosine to fp32."""
    model = random_model(SMALL_CONFIGS[name]())
    exact = cliplab.Pipeline(model, device="cpu", precision="fp32")
    int8 = cliplab.Pipeline(model, device="cpu", precision="int8")
    assert int8.precision == "int8" and int8.dtype == torch.float32
    pixels = exact.preprocess.batch(sample_images(12, seed=1))
    ids = exact.tokenize(texts(seed=1))

    per_token = int8.inference_model
    counts = int8_summary(per_token)
    assert counts["dynamic"] > 0 and counts["static"] >= 1  # the pixel convolution is static from the start
    assert cosine_min(int8.encode_image(pixels), exact.encode_image(pixels)) >= 0.995
    assert cosine_min(int8.encode_text(ids), exact.encode_text(ids)) >= 0.995

    calibration = int8.calibrate(sample_images(32, seed=0), texts(seed=0))
    counts = int8_summary(int8.inference_model)
    assert counts == {"static": counts["static"], "dynamic": 0, "float": 0} and calibration.layers == counts
    assert set(calibration.quality) == {"images", "texts"} and calibration.quality["images"]["count"] == 32
    assert cosine_min(int8.encode_image(pixels), exact.encode_image(pixels)) >= 0.995
    assert cosine_min(int8.encode_text(ids), exact.encode_text(ids)) >= 0.995
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master is left alone


@pytest.mark.slow
def test_vit_b32_int8_stays_close_to_fp32():
    """The benchmark's architecture at full width and depth (random weights), calibrated: cosine >= 0.995."""
    torch.manual_seed(0)
    model = cliplab.model.CLIP(get_preset("ViT-B/32")).eval()
    exact = cliplab.Pipeline(model, device="cpu", precision="fp32")
    int8 = cliplab.Pipeline(model, device="cpu", precision="int8")
    int8.calibrate(sample_images(8, seed=0), texts(seed=0))
    pixels, ids = exact.preprocess.batch(sample_images(4, seed=1)), exact.tokenize(texts(seed=1)[:8])
    assert cosine_min(int8.encode_image(pixels), exact.encode_image(pixels)) >= 0.995
    assert cosine_min(int8.encode_text(ids), exact.encode_text(ids)) >= 0.995


@pytest.mark.parametrize("calibrated", [False, True])
def test_repeated_calls_give_the_same_result_and_leave_the_input_alone(calibrated):
    model = random_model(SMALL_CONFIGS["vit-quickgelu"]())
    int8 = cliplab.Pipeline(model, device="cpu", precision="int8")
    if calibrated:
        int8.calibrate(sample_images(8, seed=0), texts(seed=0))
    pixels, ids = random_pixels(5, model.image_size), random_tokens(5)
    kept_pixels, kept_ids = pixels.clone(), ids.clone()
    first_image, first_text = int8.encode_image(pixels), int8.encode_text(ids)
    for _ in range(3):
        assert torch.equal(int8.encode_image(pixels), first_image)
        assert torch.equal(int8.encode_text(ids), first_text)
    assert torch.equal(pixels, kept_pixels) and torch.equal(ids, kept_ids)
    # the blocks themselves: the residual stream handed in is not written into (oneDNN's "sum" would)
    block = next(m for m in int8.inference_model.modules() if isinstance(m, Int8Block))
    x = torch.randn(2, 7, block.width)
    kept = x.clone()
    assert torch.equal(block(x), block(x)) and torch.equal(x, kept)


def test_a_row_does_not_depend_on_the_rest_of_its_batch():
    """Static ranges and per-token scales: each image's and text's vector is its own, whatever it is batched with."""
    model = random_model(SMALL_CONFIGS["vit-gelu"]())
    for calibrate in (False, True):
        int8 = cliplab.Pipeline(model, device="cpu", precision="int8")
        if calibrate:
            int8.calibrate(sample_images(8, seed=0), texts(seed=0))
        pixels, ids = random_pixels(6, model.image_size), random_tokens(6)
        ids[:, 20:] = 0  # one common length, so that the batch and the single rows compute the same positions
        ids[:, 19] = 49407
        batch_image, batch_text = int8.encode_image(pixels), int8.encode_text(ids)
        for i in (0, 3):
            torch.testing.assert_close(int8.encode_image(pixels[i : i + 1])[0], batch_image[i], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(int8.encode_text(ids[i : i + 1])[0], batch_text[i], atol=1e-4, rtol=1e-4)


def test_calibration_files_round_trip(tmp_path):
    model = random_model(get_preset("ViT-nano"))
    write_checkpoint(model, tmp_path / "model", "cliplab")
    int8 = cliplab.load(tmp_path / "model", device="cpu", precision="int8")
    assert int8.calibration is None
    calibration = int8.calibrate(sample_images(8, seed=0), texts(seed=0))
    path = calibration.save(calibration_path(tmp_path / "model"))
    assert path == tmp_path / "model" / "int8_calibration.json"
    again = Calibration.load(path)
    assert again == calibration and again.fingerprint == int8.identity.fingerprint
    assert json.loads(path.read_text())["ranges"]["transformer.resblocks.0.attn.in_proj"] == list(
        calibration.ranges["transformer.resblocks.0.attn.in_proj"]
    )
    reloaded = cliplab.load(tmp_path / "model", device="cpu", precision="int8")  # found beside the model
    assert reloaded.calibration == calibration
    pixels, ids = random_pixels(3, model.image_size), random_tokens(3)
    assert torch.equal(reloaded.encode_image(pixels), int8.encode_image(pixels))
    assert torch.equal(reloaded.encode_text(ids), int8.encode_text(ids))
    # beside a single-file checkpoint
    assert calibration_path(tmp_path / "ViT-B-32.pt") == tmp_path / "ViT-B-32.pt.int8_calibration.json"
    # broken files are named
    (tmp_path / "bad.json").write_text('{"version": 99, "ranges": {}}')
    with pytest.raises(ValueError, match="bad.json: calibration format 99"):
        Calibration.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"version": 1, "ranges": {"a": [1]}}')
    with pytest.raises(ValueError, match="not a cliplab int8 calibration"):
        Calibration.load(tmp_path / "bad.json")


def test_a_calibration_of_other_weights_is_ignored_with_a_warning():
    model = random_model(get_preset("ViT-nano"))
    int8 = cliplab.Pipeline(model, device="cpu", precision="int8")
    calibration = int8.calibrate(sample_images(4, seed=0), texts(seed=0))
    other = cliplab.Pipeline(random_model(get_preset("ViT-nano"), seed=1), device="cpu", precision="int8")
    other.calibration = calibration
    with pytest.warns(cpu.Int8Warning, match="made for other weights"):
        model_int8 = other.inference_model
    assert int8_summary(model_int8)["dynamic"] > 0


def test_a_cpu_without_vnni_falls_back_with_a_clear_message(tmp_path, monkeypatch, capsys):
    cpuinfo = tmp_path / "cpuinfo"
    flags = cpu.CPUINFO.read_text()
    for flag in cpu.INT8_CPU_FLAGS:
        flags = flags.replace(f" {flag}", "")
    cpuinfo.write_text(flags)
    monkeypatch.setattr(cpu, "CPUINFO", cpuinfo)
    cpu.int8_cpu_flags.cache_clear()
    try:
        assert cpu.int8_cpu_flags() == ()
        model = random_model(get_preset("ViT-nano"))
        expected = cliplab.Pipeline(model, device="cpu", precision="auto").precision
        with pytest.warns(cpu.Int8Warning, match=r"no int8 dot-product instructions \(none of avx512_vnni"):
            pipeline = cliplab.Pipeline(model, device="cpu", precision="int8")
        assert pipeline.precision == expected and not pipeline.int8
        write_checkpoint(model, tmp_path / "model", "cliplab")
        argv = ["embed", "--texts", "a cat", "--out", str(tmp_path / "v.npy"), "--model", str(tmp_path / "model")]
        assert main([*argv, "--precision", "int8"]) == 0
        err = capsys.readouterr().err
        assert err.startswith("cliplab embed: warning: int8 is not available: this CPU")
        assert err.count("warning") == 1 and "Int8Warning" not in err and "api.py" not in err
        assert f"computing in {expected} instead" in err
    finally:
        cpu.int8_cpu_flags.cache_clear()
    assert cpu.int8_unavailable("cuda:0") == "int8 runs on the CPU only (device cuda:0); use bf16 or fp16 on cuda"


def test_uint8_quantization_rounds_and_saturates():
    x = torch.tensor([-10.0, -0.26, -0.24, 0.0, 0.125, 0.26, 1.0, 63.74, 100.0])
    scale, zero = uint8_params(-1.0, 62.75)
    assert zero == 4 and scale == pytest.approx(0.25)
    expected = torch.clamp(torch.floor(x / scale + 0.5) + zero, 0, 255).to(torch.uint8)
    assert torch.equal(quantize_uint8(x, scale, zero), expected)
    assert quantize_uint8(x, scale, zero).tolist() == [0, 3, 3, 4, 5, 5, 8, 255, 255]  # 0.125 is a tie: half up


@pytest.mark.parametrize("quick_gelu", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_int8_block_follows_the_float_block(quick_gelu, causal):
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 4, quick_gelu=quick_gelu).eval()
    x = torch.randn(3, 11, 64)
    from cliplab.quantize.calibration import record_ranges

    ranges = record_ranges(block, lambda: block(x, causal=causal))
    keys = {"in_proj": "attn.in_proj", "out_proj": "attn.out_proj", "c_fc": "mlp.c_fc", "c_proj": "mlp.c_proj"}
    static = Int8Block(block, {k: ranges[v] for k, v in keys.items()})
    dynamic = Int8Block(block)
    with torch.inference_mode():
        expected = block(x, causal=causal)
        for int8 in (static, dynamic):
            out = int8(x, causal=causal)
            assert out.dtype == torch.float32 and out.shape == x.shape
            assert cosine_min(out.flatten(0, 1), expected.flatten(0, 1)) >= 0.999


def test_int8_linear_and_convolution_with_batchnorm_follow_float():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24)
    x = torch.randn(2, 5, 48)
    with torch.inference_mode():
        for layer in (Int8Linear(linear), Int8Linear(linear, (float(x.min()), float(x.max())))):
            assert cosine_min(layer(x).flatten(0, 1), linear(x).flatten(0, 1)) >= 0.999
        conv = torch.nn.Conv2d(8, 16, 3, padding=1, stride=2)
        bn = torch.nn.BatchNorm2d(16).eval()
        bn.running_mean.normal_(0, 0.2), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
        images = torch.randn(2, 8, 12, 12)
        expected = torch.relu(bn(conv(images)))
        out = Int8Conv2d(conv, (float(images.min()), float(images.max())), bn, relu=True)(images)
        assert out.shape == expected.shape
        assert cosine_min(out.flatten(1), expected.flatten(1)) >= 0.999


def test_calibrate_and_info_on_the_command_line(tmp_path, capsys):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    folder = tmp_path / "samples" / "sub"
    folder.mkdir(parents=True)
    for i, image in enumerate(sample_images(6, seed=0)):
        image.save(folder / f"{i}.png")
    (tmp_path / "texts.txt").write_text("\n".join(texts(seed=0)) + "\n\n")
    model = str(tmp_path / "model")
    assert main(["calibrate", model, str(tmp_path / "samples"), "--texts", str(tmp_path / "texts.txt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["images"], report["texts"]) == (6, 24) and report["layers"]["dynamic"] == 0
    assert report["calibration"] == str(tmp_path / "model" / "int8_calibration.json")
    assert main(["info", model]) == 0
    out = capsys.readouterr().out
    assert "int8         calibrated" in out and "on 6 images and 24 texts" in out and "int8 vs fp32 texts" in out
    assert main(["info", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["int8_calibration"]
    assert info["quality"]["images"]["cosine_min"] >= 0.99 and "ranges" not in info
    assert main(["calibrate", model]) == 1
    assert "give sample images" in capsys.readouterr().err
    assert main(["calibrate", model, str(tmp_path / "nowhere")]) == 1
    assert "no such image file or folder" in capsys.readouterr().err


def test_precision_int8_on_every_command_that_loads_a_model(tmp_path, capsys):
    from cliplab.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    loading = {name for name, sub in commands.items() if any("--precision" in a.option_strings for a in sub._actions)}
    assert loading == {
        "classify",
        "embed",
        "similarity",
        "index",
        "search",
        "serve",
        "eval",
        "detect",
        "explain",
        "generate",
    }
    for name in loading:
        action = next(a for a in commands[name]._actions if "--precision" in a.option_strings)
        assert "int8" in action.choices, name

    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    model = ["--model", str(tmp_path / "model"), "--precision", "int8"]
    image = tmp_path / "a.png"
    sample_images(1, seed=0, size=64)[0].save(image)
    (tmp_path / "photos").mkdir()
    for i, picture in enumerate(sample_images(3, seed=1)):
        picture.save(tmp_path / "photos" / f"{i}.png")
    zeroshot = tmp_path / "zeroshot.jsonl"
    zeroshot.write_text("".join(json.dumps({"image": "a.png", "concept": c}) + "\n" for c in ("cat", "dog")))
    runs = [
        ["classify", str(image), "--labels", "a cat,a dog", "--json"],
        ["embed", "--texts", "a cat", "--out", str(tmp_path / "t.npy")],
        ["similarity", "--images", str(image), "--texts", "a cat", "a dog", "--json"],
        ["index", str(tmp_path / "photos"), "--store", str(tmp_path / "store"), "--workers", "0", "--json"],
        ["search", str(tmp_path / "store"), "a cat", "-k", "2", "--json"],
        ["eval", "--zeroshot", str(zeroshot), "--json"],
        ["detect", str(image), "a cat", "--json"],
        ["explain", str(image), "a cat", "--out", str(tmp_path / "map.png")],
        [
            "generate",
            "a red circle",
            "--steps",
            "1",
            "--size",
            "32",
            "--cutouts",
            "2",
            "--out",
            str(tmp_path / "g.png"),
        ],
    ]
    for argv in runs:
        assert main([*argv, *model]) == 0, argv
    capsys.readouterr()
    # serve: the same loading path; test_store_and_service_run_with_an_int8_model runs its app on int8


def test_store_and_service_run_with_an_int8_model(tmp_path):
    """A store indexed in int8 is searched by the service in int8, and by fp32 and bf16 pipelines too: the
    store's fingerprint is the model's (weights, preprocessing), not the precision's."""
    pytest.importorskip("faiss")
    from fastapi.testclient import TestClient
    from test_index import write_images

    from cliplab.index import Searcher, index_paths
    from cliplab.serve import ServeSettings, create_app

    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), tmp_path / "model", "cliplab")
    photos = write_images(tmp_path / "photos", 12)
    (tmp_path / "captions.csv").write_text("id,text\nc1,a red square\nc2,a blue circle\nc3,two dogs in snow\n")
    int8 = cliplab.load(tmp_path / "model", device="cpu", precision="int8")
    int8.calibrate(sample_images(16, seed=0), texts(seed=0)).save(calibration_path(tmp_path / "model"))
    int8 = cliplab.load(tmp_path / "model", device="cpu", precision="int8")
    assert int8_summary(int8.inference_model)["dynamic"] == 0
    store = tmp_path / "store"
    index_paths(int8, store, [tmp_path / "photos"], captions=tmp_path / "captions.csv", workers=0, progress=False)

    client = TestClient(create_app(int8, str(store), ServeSettings()))
    assert client.get("/api/health").json()["images"] == 12
    hits = client.get("/api/search", params={"q": "two dogs in snow", "k": 3, "target": "text"}).json()["hits"]
    assert hits[0]["text"] == "two dogs in snow" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    photo = photos[5].read_bytes()
    by_image = client.post("/api/search/image", files={"file": ("q.png", photo)}, data={"k": "3"}).json()["hits"]
    assert by_image[0]["name"] == photos[5].name and by_image[0]["score"] == pytest.approx(1.0, abs=1e-5)

    for precision in ("fp32", "bf16"):  # the same model in another precision may search the int8 store
        other = cliplab.load(tmp_path / "model", device="cpu", precision=precision)
        assert other.identity == int8.identity
        with Searcher(other, store) as searcher:
            hit = searcher.image(str(photos[5]), k=1)[0]
            assert hit.item.path.endswith(photos[5].name) and hit.score >= 0.99
            assert searcher.text("two dogs in snow", k=1, target="text")[0].item.caption == "two dogs in snow"


@pytest.mark.parametrize("name", ["vit-quickgelu", "rn-gelu"])
def test_onnx_int8_export_matches_cliplab_int8(name, tmp_path):
    """QDQ graphs with cliplab's int8 weights and calibrated scales: ONNX Runtime runs them in its int8
    kernels and gives cliplab's int8 features (attention in float32 on both sides)."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from cliplab.quantize import int8_model
    from cliplab.quantize.calibrate import pixel_range

    model = random_model(SMALL_CONFIGS[name]())
    pipeline = cliplab.Pipeline(model, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="needs a calibration"):
        pipeline.export_onnx(tmp_path / "none")
    calibration = pipeline.calibrate(sample_images(16, seed=0), texts(seed=0))
    folder = pipeline.export_onnx(tmp_path / "onnx")
    assert json.loads((folder / "cliplab_onnx.json").read_text())["precision"] == "int8"
    reference = int8_model(model, calibration, pixel_range(pipeline), attention_dtype=torch.float32)

    def matrices(tower: torch.nn.Module) -> int:
        return sum(
            4 if isinstance(m, Int8Block) else 1
            for m in tower.modules()
            if isinstance(m, (Int8Block, Int8Linear, Int8Conv2d))
        )

    pixels, ids = pipeline.preprocess.batch(sample_images(5, seed=1)), pipeline.tokenize(texts(seed=1)[:7])
    full = torch.zeros(len(ids), 77, dtype=torch.long)
    full[:, : ids.shape[1]] = ids  # the graph runs all 77 positions and reads each row at its end token
    for graph, inputs, encode, tower in (
        ("image_encoder.onnx", {"pixels": pixels.numpy()}, lambda: reference.encode_image(pixels), reference.visual),
        ("text_encoder.onnx", {"token_ids": full.numpy()}, lambda: reference.encode_text(ids), reference.transformer),
    ):
        stored = onnx.load(str(folder / graph)).graph
        int8_weights = [i for i in stored.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
        assert len(int8_weights) == matrices(tower), graph  # every int8 layer's weight is stored as int8
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimized_{graph}")
        session = ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])
        fused = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
        assert fused & {"MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv"}, fused  # int8 kernels
        ours = session.run(None, inputs)[0]
        with torch.inference_mode():
            expected = encode()
        assert cosine_min(torch.from_numpy(ours), expected) >= 0.9999, graph


def test_convert_to_onnx_int8_on_the_command_line(tmp_path, capsys):
    pytest.importorskip("onnx")
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    model = str(tmp_path / "model")
    assert main(["convert", model, str(tmp_path / "onnx"), "--to", "onnx", "--int8"]) == 1
    assert "no int8 calibration at" in capsys.readouterr().err
    (tmp_path / "texts.txt").write_text("\n".join(texts(seed=0)))
    assert main(["calibrate", model, "--texts", str(tmp_path / "texts.txt"), "--json"]) == 0
    capsys.readouterr()
    assert main(["convert", model, str(tmp_path / "onnx"), "--to", "onnx", "--int8", "--json"]) == 1
    assert "needs a calibration" in capsys.readouterr().err  # images were not calibrated: that tower is per token


@pytest.mark.parametrize("text", ["bert", "roberta"])
def test_int8_covers_timm_image_towers_and_hugging_face_text_towers(text, tmp_path):
    """The generic walk quantizes the towers from other libraries too: their linear layers and convolutions."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    from towers_fixtures import towers_config

    config = towers_config(tmp_path, text=text)
    exact, int8 = cliplab.build(config, precision="fp32"), cliplab.build(config, precision="int8")
    pixels = exact.preprocess.batch(sample_images(6, seed=1))
    ids = exact.tokenize(texts(seed=1))
    counts = int8_summary(int8.inference_model)
    assert counts["dynamic"] > 0 and counts["static"] == 1  # timm's first convolution: the pixel range
    for calibrated in (False, True):
        if calibrated:
            int8.calibrate(sample_images(16, seed=0), texts(seed=0))
            counts = int8_summary(int8.inference_model)
            assert counts["dynamic"] == counts["float"] == 0 and counts["static"] > 20
        assert cosine_min(int8.encode_image(pixels), exact.encode_image(pixels)) >= 0.995
        assert cosine_min(int8.encode_text(ids), exact.encode_text(ids)) >= 0.995
    trunk = int8.inference_model.visual.trunk
    assert isinstance(trunk.conv_stem, Int8Conv2d) and type(exact.model.visual.trunk.conv_stem) is torch.nn.Conv2d
