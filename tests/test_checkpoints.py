"""Reading and writing every checkpoint format on files made here in the published layouts."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import pytest
import torch
from conftest import random_model, random_pixels, random_tokens
from safetensors.torch import save_file

import cliplab
from cliplab.checkpoints import CheckpointError, read_checkpoint, write_checkpoint
from cliplab.checkpoints.torchfiles import is_torchscript_archive
from cliplab.model import CLIP, get_preset


def features(model, size):
    with torch.no_grad():
        return model.encode_image(random_pixels(2, size)), model.encode_text(random_tokens(2))


def assert_same_model(a: CLIP, b: CLIP, atol: float = 1e-6):
    size = a.config.vision.image_size
    for x, y in zip(features(a, size), features(b, size)):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


class _OpenAIStyleArchive(torch.nn.Module):
    """The published OpenAI ``.pt`` layout: a traced CLIP in fp16 with the extra tensors
    input_resolution, context_length and vocab_size."""

    def __init__(self, model: CLIP):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(model.image_size))
        self.register_buffer("context_length", torch.tensor(model.context_length))
        self.register_buffer("vocab_size", torch.tensor(model.config.text.vocab_size))
        self._model = [model]

    def forward(self, ids):
        return self._model[0].encode_text(ids)


def write_openai_torchscript(model: CLIP, path):
    archive = _OpenAIStyleArchive(model).eval()
    with pytest.warns(Warning):  # tracing is deprecated upstream; the published files were traced
        traced = torch.jit.trace(archive, (random_tokens(1),), check_trace=False)
    traced.half()
    traced.save(str(path))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("arch", ["ViT-nano", "RN-nano"])
def test_openai_torchscript_archive_reads_without_running_code(arch, tmp_path):
    config = get_preset(arch)
    config.quick_gelu = True  # as in all of OpenAI's models
    config.vision.heads = None  # OpenAI's convention (64-channel heads), the only one a bare file can imply
    config.vision.__post_init__()
    model = random_model(config)
    path = tmp_path / f"{arch}.pt"
    write_openai_torchscript(model, path)
    assert is_torchscript_archive(path)

    ckpt = read_checkpoint(path)
    assert ckpt.source_format == "openai-torchscript"
    assert ckpt.config.quick_gelu is True
    assert all(v.dtype == torch.float32 for v in ckpt.state_dict.values() if v.is_floating_point())
    assert "input_resolution" not in ckpt.state_dict
    # The weights are the fp16 values, widened to fp32.
    expected = {k: v.half().float() for k, v in model.state_dict().items()}
    for key, value in expected.items():
        assert torch.equal(ckpt.state_dict[key], value), key
    loaded = cliplab.load(path, device="cpu")
    reference = random_model(model.config)
    reference.load_state_dict(expected)
    assert_same_model(loaded.model, reference)


def test_torchscript_reader_refuses_foreign_globals(tmp_path):
    """An archive whose data.pkl references anything but tensors is refused, not executed."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Exploit()))
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
    with pytest.raises(CheckpointError, match="never runs code"):
        read_checkpoint(path)
    assert not marker.exists()


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Exploit()}, path)
    with pytest.raises(CheckpointError, match="not unpickled"):
        read_checkpoint(path)
    assert not marker.exists()


def test_open_clip_training_checkpoint_with_ddp_prefix(tmp_path):
    """open_clip_train saves {'epoch', 'name', 'state_dict' (with 'module.'), 'optimizer'}."""
    model = random_model(get_preset("ViT-nano"))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state, "optimizer": {}}, tmp_path / "epoch_3.pt")
    with pytest.warns(UserWarning, match="does not record its activation"):
        loaded = cliplab.load(tmp_path / "epoch_3.pt", device="cpu", quick_gelu=None)
    assert loaded.model.config.quick_gelu is True  # assumed, and said so
    assert any("activation" in note for note in loaded.checkpoint.notes)
    gelu = cliplab.load(tmp_path / "epoch_3.pt", device="cpu", quick_gelu=False)
    assert_same_model(gelu.model, model)


def test_bare_safetensors_state_dict(tmp_path):
    model = random_model(get_preset("RN-nano"))
    save_file(model.state_dict(), str(tmp_path / "rn.safetensors"))
    loaded = cliplab.load(tmp_path / "rn.safetensors", device="cpu", quick_gelu=False)
    assert loaded.model.config.vision.layers == (1, 1, 1, 1)
    assert_same_model(loaded.model, model)


@pytest.mark.parametrize("fmt", ["cliplab", "open_clip", "huggingface", "openai"])
def test_every_format_round_trips(fmt, tmp_path):
    model = random_model(get_preset("ViT-nano"))
    written = write_checkpoint(model, tmp_path / "ckpt", fmt)
    quick_gelu = False if fmt == "openai" else None  # a bare state dict does not record it
    loaded = cliplab.load(written, device="cpu", quick_gelu=quick_gelu)
    assert loaded.model.config.vision == model.config.vision or fmt == "openai"
    assert_same_model(loaded.model, model)


def test_cliplab_format_records_preprocess_and_tokenizer(tmp_path):
    model = random_model(get_preset("ViT-nano"))
    write_checkpoint(model, tmp_path / "c", "cliplab", metadata={"recipe": "test"})
    meta = json.loads((tmp_path / "c" / "cliplab_config.json").read_text())
    assert meta["preprocess"]["image_size"] == 64 and meta["preprocess"]["interpolation"] == "bicubic"
    assert meta["tokenizer"]["context_length"] == 77 and meta["tokenizer"]["eot_token_id"] == 49407
    assert read_checkpoint(tmp_path / "c").metadata == {"recipe": "test"}


def test_conflicting_activation_is_an_error(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "c", "cliplab")  # GELU
    with pytest.raises(CheckpointError, match="records GELU but QuickGELU was requested"):
        read_checkpoint(tmp_path / "c", quick_gelu=True)


def test_open_clip_config_disagreeing_with_weights_is_an_error(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "oc", "open_clip")
    meta = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    meta["model_cfg"]["vision_cfg"]["image_size"] = 96
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="image_size"):
        read_checkpoint(tmp_path / "oc")


def test_unsupported_open_clip_option_is_named(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "oc", "open_clip")
    meta = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    meta["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="attentional_pool"):
        read_checkpoint(tmp_path / "oc")


def test_preprocess_size_mismatch_is_reported(tmp_path):
    write_checkpoint(
        random_model(get_preset("ViT-nano")),
        tmp_path / "c",
        "cliplab",
        preprocess={"image_size": 96, "mean": [0.5] * 3, "std": [0.5] * 3},
    )
    with pytest.raises(CheckpointError, match="96 px but the model takes 64 px"):
        cliplab.load(tmp_path / "c", device="cpu")


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "not a readable PyTorch file"),
        (b"this is a text file, not a checkpoint", "not a readable PyTorch file"),
    ],
)
def test_non_checkpoint_files_get_a_clear_error(content, match, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)


def test_truncated_checkpoint_gets_a_clear_error(tmp_path):
    model = random_model(get_preset("ViT-nano"))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    (tmp_path / "cut.pt").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "cut.pt")
    save_file(model.state_dict(), str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(tmp_path / "cut.safetensors")


def test_state_dict_of_something_else_is_named(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="missing token_embedding.weight"):
        read_checkpoint(tmp_path / "resnet.pt", quick_gelu=True)


def test_wrong_architecture_weights_are_named(tmp_path):
    model = random_model(get_preset("ViT-nano"))
    write_checkpoint(model, tmp_path / "c", "cliplab")
    meta = json.loads((tmp_path / "c" / "cliplab_config.json").read_text())
    meta["model"]["vision"]["width"] = 256
    (tmp_path / "c" / "cliplab_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="visual"):
        cliplab.load(tmp_path / "c", device="cpu")


def test_unknown_folder_and_missing_path(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a CLIP checkpoint folder"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="neither an existing file"):
        cliplab.load(tmp_path / "nope", device="cpu")


def test_default_model_missing_says_how_to_create_it():
    with pytest.raises(CheckpointError, match="cliplab setup --install"):
        cliplab.load(device="cpu")


def test_hub_name_offline_says_which_files_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as error:
        cliplab.load("ViT-B-32/openai", device="cpu", cache_dir=tmp_path / "hub")
    message = str(error.value)
    assert "timm/vit_base_patch32_clip_224.openai" in message and "open_clip_model.safetensors" in message


def test_hub_name_resolves_through_the_hub_cache(tmp_path, monkeypatch):
    """A model in the Hugging Face cache layout (models--org--name/snapshots/REV) loads by name."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    model = random_model(get_preset("ViT-nano"))
    write_checkpoint(model, repo / "snapshots" / revision, "open_clip")
    loaded = cliplab.load("ViT-B-32/openai", device="cpu", cache_dir=tmp_path / "hub")
    assert_same_model(loaded.model, model)
