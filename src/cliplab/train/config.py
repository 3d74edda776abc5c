"""Training configuration: a TOML or YAML file of four sections, overridden by ``key=value`` pairs.

[model]   arch = "ViT-nano"  (a preset)  or  init_from = "path or name" (fine-tune; a model config
          file .toml/.json builds towers from other libraries with their pretrained weights: docs/towers.md)
[data]    train = [["corpus/train.jsonl", 1.0]]   (sources with weights)
[train]   batch_size, steps, lr, ...
[eval]    zeroshot = "corpus/zeroshot_test.jsonl", retrieval = "...", every = 500
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..extras import require


@dataclass
class ModelSection:
    arch: str = "ViT-nano"
    init_from: str = ""  # a checkpoint to fine-tune (any format cliplab reads, model configs too); overrides arch
    quick_gelu: bool | None = None  # for bare state dicts in init_from; presets carry their own
    image_size: int = 0  # 0: the architecture's own


@dataclass
class DataSection:
    train: list[list[Any]] = field(default_factory=list)  # [[path or shard pattern, weight], ...]
    caption_filter: bool = True
    shuffle_buffer: int = 1000
    resample: bool = False
    workers: int = 2
    keep: str = ""  # a keep-list from `cliplab data filter --keep-list`: train only on its samples
    augment: bool = False  # random resized crops, colour jitter, flips (docs/training.md)
    augment_options: dict[str, Any] = field(default_factory=dict)  # AugmentConfig's fields
    views: int = 1  # with augment: cached views per image of a locked image tower (view 0 plain)


@dataclass
class TrainSection:
    batch_size: int = 128  # per process and micro-batch
    accum_freq: int = 1  # micro-batches per optimizer step; negatives span all of them
    steps: int = 1000
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup_steps: int = 100
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    grad_clip: float = 0.0  # 0: off
    precision: str = "bf16"  # bf16 (autocast) or fp32
    grad_checkpointing: bool = False
    patch_dropout: float = 0.0
    lock_image: bool = False
    lock_text: bool = False
    unlock_image_blocks: int = 0  # with lock_image: the last N blocks still learn
    unlock_text_blocks: int = 0
    image_lr: float = 0.0  # the image tower's own learning rate (0: lr); heads learn at lr
    text_lr: float = 0.0
    feature_cache: bool = True  # a fully locked tower's features computed once, cached on disk
    feature_cache_dir: str = ""  # default: $CLIPLAB_HOME/features
    loss: str = "clip"  # clip or siglip
    local_loss: bool = False
    gather_with_grad: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10


@dataclass
class EvalSection:
    zeroshot: str = ""  # JSONL of {"image", "concept"}; classes from concepts.json beside it, if any
    retrieval: str = ""  # JSONL of {"image", "caption"}
    templates: list[str] = field(
        default_factory=lambda: ["{}", "an emoji of {}.", "a drawing of {}.", "a picture of {}."]
    )
    every: int = 0  # steps; 0: only at the end
    batch_size: int = 256


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    base_dir: str = ""  # relative paths in the file resolve against its folder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        sections = {"model": ModelSection, "data": DataSection, "train": TrainSection, "eval": EvalSection}
        unknown = set(data) - set(sections) - {"base_dir"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; expected {sorted(sections)}")
        built = {}
        for name, section_cls in sections.items():
            values = data.get(name, {}) or {}
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = set(values) - known
            if bad:
                raise ValueError(f"unknown keys in [{name}]: {sorted(bad)}; known: {sorted(known)}")
            built[name] = section_cls(**values)
        config = cls(**built, base_dir=data.get("base_dir", ""))
        config.validate()
        return config

    def validate(self) -> None:
        for section in (self.model, self.data, self.train, self.eval):
            for f in dataclasses.fields(section):
                value, default = getattr(section, f.name), f.default
                if default is dataclasses.MISSING or default is None:
                    continue
                expected = (int, float) if type(default) is float else type(default)
                if not isinstance(value, expected) or (type(default) is not bool and isinstance(value, bool)):
                    raise ValueError(
                        f"{type(section).__name__.removesuffix('Section').lower()}.{f.name} must be a "
                        f"{type(default).__name__}, got {value!r}"
                    )
        t = self.train
        if t.precision not in ("bf16", "fp32"):
            raise ValueError(f"train.precision must be bf16 or fp32, not {t.precision!r}")
        if t.loss not in ("clip", "siglip"):
            raise ValueError(f"train.loss must be clip or siglip, not {t.loss!r}")
        if t.batch_size < 2 or t.accum_freq < 1 or t.steps < 1:
            raise ValueError("train.batch_size must be >= 2, accum_freq >= 1 and steps >= 1")
        if t.checkpoint_every < 1 or t.log_every < 1:
            raise ValueError("train.checkpoint_every and train.log_every must be >= 1 (steps)")
        if min(t.unlock_image_blocks, t.unlock_text_blocks) < 0 or t.image_lr < 0 or t.text_lr < 0:
            raise ValueError("train.unlock_*_blocks and train.image_lr / text_lr must be >= 0")
        if self.data.views < 1:
            raise ValueError(f"data.views must be >= 1, got {self.data.views}")
        if self.data.augment:
            from ..data.augment import AugmentConfig

            AugmentConfig.from_dict(self.data.augment_options)
        if not 0 <= t.patch_dropout < 1:
            raise ValueError(f"train.patch_dropout must be in [0, 1), not {t.patch_dropout}")

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what was meant."""
        t = self.train
        found = []
        if t.warmup_steps > t.steps:
            found.append(
                f"train.warmup_steps ({t.warmup_steps}) exceeds train.steps ({t.steps}): the "
                f"learning rate never reaches train.lr ({t.lr:g})"
            )
        if self.eval.every and self.eval.every > t.steps:
            found.append(
                f"eval.every ({self.eval.every}) exceeds train.steps ({t.steps}): evaluation runs only at the end"
            )
        return found

    def resolve(self, path: str) -> str:
        """A path from the config, relative to the config file's folder unless absolute."""
        if not path or os.path.isabs(path) or not self.base_dir or "://" in path:
            return path
        return str(Path(self.base_dir) / path)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values in TOML syntax; bare words are strings)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
        data.setdefault(section, {})[name] = _parse_value(value.strip())
    return data


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as error:
                raise ValueError(f"{path} is not valid TOML: {error}") from None
        elif path.suffix in (".yaml", ".yml"):
            yaml = require("yaml", "train", "a YAML training config")

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{path} is not valid YAML: {error}") from None
        else:
            raise ValueError(f"{path}: the config must be .toml or .yaml")
        data["base_dir"] = str(path.resolve().parent)
    return TrainConfig.from_dict(apply_overrides(data, overrides or []))
