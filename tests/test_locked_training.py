"""Locked-tower training: what learns (heads, unlocked blocks, per-tower learning rates), the feature
cache (computed once, recomputed for a changed tower, file or view, never reused wrongly), and runs on
cached features that resume bitwise exactly, augmented views included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from towers_fixtures import TIMM_ARCH, write_text_tower, write_timm_weights

import cliplab
from cliplab.checkpoints import read_checkpoint
from cliplab.data.augment import AugmentConfig
from cliplab.model import CLIP, get_preset
from cliplab.preprocess import Preprocessor
from cliplab.train.config import TrainConfig, load_config
from cliplab.train.features import FeatureCache, content_hash, image_features, view_key
from cliplab.train.locked import apply_locks, lr_scale_of, tower_blocks
from cliplab.train.loop import train
from cliplab.train.optim import make_optimizer

COLOURS = ["red", "green", "blue", "orange", "purple", "black", "yellow", "cyan"]


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> Path:
    """A folder with tiny pretrained-style towers, their model config and a small captioned dataset."""
    root = tmp_path_factory.mktemp("lit")
    write_timm_weights(root / "timm.safetensors")
    write_text_tower(root / "bert", "bert")
    (root / "towers.toml").write_text(
        f"embed_dim = 16\n[vision]\ntype = 'timm'\nmodel_name = '{TIMM_ARCH}'\nimage_size = 32\n"
        "pretrained = 'timm.safetensors'\nhead = 'linear'\n"
        "[text]\ntype = 'hf'\nmodel_name = 'bert'\ncontext_length = 16\nhead = { type = 'mlp', dropout = 0.1 }\n"
    )
    rows = ["image,caption"]
    for i, colour in enumerate(COLOURS * 2):
        image = Image.new("RGB", (40, 36), "white")
        ImageDraw.Draw(image).ellipse((2 + i, 3, 30, 30), fill=colour)
        image.save(root / f"{i}.png")
        rows.append(f"{i}.png,a {colour} circle{' on the left' if i % 5 == 0 else ''}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def lit_config(root: Path, tmp_path: Path, **train) -> TrainConfig:
    settings = {
        "batch_size": 4,
        "steps": 6,
        "lr": 5e-3,
        "warmup_steps": 1,
        "precision": "fp32",
        "lock_image": True,
        "lock_text": True,
        "checkpoint_every": 1,
        "log_every": 1,
        "seed": 2,
        "feature_cache_dir": str(tmp_path / "features"),
        **train,
    }
    lines = [
        "[model]",
        f"init_from = '{root / 'towers.toml'}'",
        "[data]",
        f"train = [['{root / 'pairs.csv'}', 1.0]]",
        "workers = 0",
        "augment = true",
        "views = 3",
        "[train]",
    ] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = tmp_path / "lit.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def curve(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_locked_towers_train_only_their_heads_on_cached_features(towers, tmp_path):
    config = lit_config(towers, tmp_path)
    start = cliplab.load(towers / "towers.toml", precision="fp32").model.state_dict()
    result = train(config, tmp_path / "run", progress=False)
    assert result.steps == 6 and np.isfinite(result.final_loss)
    after = read_checkpoint(tmp_path / "run" / "model").state_dict
    for name, tensor in start.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == (name.startswith(("visual.head.", "text.head.")) or name == "logit_scale"), name
    cached = sorted(p.name for p in (tmp_path / "features").rglob("*.npz"))
    assert cached == sorted([f"{view_key(v, AugmentConfig(), 2, 'fp32')}.npz" for v in range(3)] + ["text-fp32.npz"])


def test_a_run_on_cached_augmented_views_resumes_bitwise(towers, tmp_path):
    config = lit_config(towers, tmp_path)
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "stopped", progress=False, stop_after_steps=3)
    assert not (tmp_path / "stopped" / "model").exists()
    train(config, tmp_path / "stopped", progress=False, resume=True)
    assert curve(tmp_path / "stopped") == curve(tmp_path / "straight")
    a = read_checkpoint(tmp_path / "straight" / "model").state_dict
    b = read_checkpoint(tmp_path / "stopped" / "model").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_live_text_tower_beside_a_cached_image_tower_learns(towers, tmp_path):
    config = lit_config(towers, tmp_path, lock_text=False, text_lr=1e-3)
    start = cliplab.load(towers / "towers.toml", precision="fp32").model.state_dict()
    train(config, tmp_path / "run", progress=False)
    after = read_checkpoint(tmp_path / "run" / "model").state_dict
    assert all(torch.equal(start[k], after[k]) for k in start if k.startswith("visual.trunk."))
    assert not torch.equal(
        start["text.transformer.encoder.layer.0.attention.self.query.weight"],
        after["text.transformer.encoder.layer.0.attention.self.query.weight"],
    )
    assert not list((tmp_path / "features").rglob("text-*.npz"))  # a training tower is never cached


def test_unlocking_the_last_blocks_and_a_tower_learning_rate(towers, tmp_path):
    config = lit_config(towers, tmp_path, unlock_image_blocks=1, lock_text=False, image_lr=1e-4, text_lr=1e-3)
    model = cliplab.load(towers / "towers.toml", precision="fp32").model
    counts = apply_locks(model, config)
    blocks, after = tower_blocks(model, "image")
    unlocked = {id(p) for m in [blocks[-1], *after] for p in m.parameters()}
    for name, param in model.visual.trunk.named_parameters():
        assert param.requires_grad == (id(param) in unlocked), name
    assert counts["image"] == sum(p.numel() for m in [blocks[-1], *after] for p in m.parameters())
    optimizer = make_optimizer(list(model.named_parameters()), config.train, lr_scale_of(config))
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert scale_of[id(blocks[-1].parameters().__next__())] == pytest.approx(1e-4 / 5e-3)
    assert scale_of[id(model.text.transformer.embeddings.word_embeddings.weight)] == pytest.approx(1e-3 / 5e-3)
    assert scale_of[id(model.visual.head.proj.weight)] == 1.0 and scale_of[id(model.logit_scale)] == 1.0
    result = train(config, tmp_path / "run", progress=False)  # unlocked blocks run live, no cache
    assert result.steps == 6 and not list((tmp_path / "features").rglob("*.npz"))


def test_locking_both_of_cliplab_own_towers_is_refused(tmp_path):
    config = TrainConfig.from_dict({"train": {"lock_image": True, "lock_text": True}})
    with pytest.raises(ValueError, match="leaves nothing to train"):
        apply_locks(CLIP(get_preset("ViT-nano")), config)
    with pytest.raises(ValueError, match="needs train.lock_image"):
        apply_locks(CLIP(get_preset("ViT-nano")), TrainConfig.from_dict({"train": {"unlock_image_blocks": 1}}))


def test_the_feature_cache_recomputes_for_a_changed_tower_file_or_view(towers, tmp_path):
    images = [str(tmp_path / f"{i}.png") for i in range(4)]
    for i, path in enumerate(images):
        shutil.copy(towers / f"{i}.png", path)
    captions = ["a circle"] * 4
    preprocess = Preprocessor(image_size=16)
    computed: list[int] = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        computed.append(len(pixels))
        return pixels.mean(dim=(2, 3))

    def features(fingerprint: str, view: int = 0, augment: AugmentConfig | None = None) -> np.ndarray:
        cache = FeatureCache(tmp_path / "cache", fingerprint, view_key(view, augment, 0, "fp32"))
        computed.clear()
        return image_features(encode, preprocess, images, captions, cache, view, augment, 0, progress=False)

    first = features("tower-a")
    assert sum(computed) == 4
    again = features("tower-a")
    assert sum(computed) == 0 and np.array_equal(first, again)  # read back, from a fresh cache object

    Image.new("RGB", (40, 36), "magenta").save(images[2])  # the same name, new content
    changed = features("tower-a")
    assert sum(computed) == 1 and not np.array_equal(changed[2], first[2])
    assert np.array_equal(changed[[0, 1, 3]], first[[0, 1, 3]])

    features("tower-b")  # another tower: nothing of tower-a's is reused
    assert sum(computed) == 4
    augmented = features("tower-a", view=1, augment=AugmentConfig())
    assert sum(computed) == 4 and not np.array_equal(augmented, changed)
    assert features("tower-a", view=1, augment=AugmentConfig()).tolist() == augmented.tolist()
    assert sum(computed) == 0
    assert content_hash(images[0]) != content_hash(images[2])


def test_resuming_with_other_augmentation_settings_is_refused(towers, tmp_path):
    config = lit_config(towers, tmp_path)
    train(config, tmp_path / "run", progress=False, stop_after_steps=2)
    config.data.views = 2
    with pytest.raises(ValueError, match="data.views"):
        train(config, tmp_path / "run", progress=False, resume=True)


def test_a_partly_unlocked_image_tower_runs_live_beside_cached_text_and_resumes_bitwise(towers, tmp_path):
    config = lit_config(towers, tmp_path, unlock_image_blocks=1)
    train(config, tmp_path / "straight", progress=False)
    assert [p.name for p in (tmp_path / "features").rglob("*.npz")] == ["text-fp32.npz"]
    train(config, tmp_path / "stopped", progress=False, stop_after_steps=3)
    train(config, tmp_path / "stopped", progress=False, resume=True)
    assert curve(tmp_path / "stopped") == curve(tmp_path / "straight")
    a = read_checkpoint(tmp_path / "straight" / "model").state_dict
    b = read_checkpoint(tmp_path / "stopped" / "model").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
