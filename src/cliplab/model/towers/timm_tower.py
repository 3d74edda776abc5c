"""An image tower from timm: the architecture without its classifier, globally pooled, then a projection
head. Parameters: ``trunk.*`` (timm's own names) and ``head.*``."""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch
from torch import nn

from ...extras import require
from .configs import TimmVisionConfig
from .heads import ProjectionHead


def import_timm() -> Any:
    return require("timm", "towers", "an image tower from timm")


def check_architecture(timm: Any, name: str) -> None:
    """Raise ``ValueError`` for a name timm does not know, with the closest names it does."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else " (timm.list_models() lists them)"
    raise ValueError(f"unknown timm architecture {name!r}: timm {timm.__version__} has no such model{hint}")


def create_trunk(config: TimmVisionConfig) -> nn.Module:
    """timm's network for ``config``, classifier removed and pooling set (random weights); the same
    procedure as OpenCLIP's ``TimmModel`` with a projection head, so both hold the same tensors."""
    timm = import_timm()
    check_architecture(timm, config.model_name)
    trunk = timm.create_model(config.model_name, pretrained=False, **config.model_kwargs)
    _remove_classifier(trunk, config.pool)
    return trunk


def _remove_classifier(trunk: Any, pool: str) -> None:
    """Classifier removed; global pooling ``pool`` ("" keeps the architecture's own, as OpenCLIP does)."""
    if pool:
        trunk.reset_classifier(0, global_pool=pool)
    else:
        trunk.reset_classifier(0)


class TimmImageTower(nn.Module):
    def __init__(self, config: TimmVisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        # Channels-last convolutions: oneDNN's (and cuDNN's) fast layout, in float32 too (about 2x for
        # EfficientNet-Lite0 on an AVX-512 CPU). The values, and the saved tensors, are unchanged.
        self.trunk: Any = create_trunk(config).to(memory_format=torch.channels_last)
        self.head = ProjectionHead(config.head, int(self.trunk.num_features), embed_dim, "vision")

    @property
    def num_features(self) -> int:
        return int(self.trunk.num_features)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled trunk features, before the head, of pixels ``[N, 3, H, W]`` (any dtype: cast to the
        first convolution's)."""
        dtype = next(self.trunk.parameters()).dtype
        return self.trunk(pixels.to(dtype).contiguous(memory_format=torch.channels_last))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if hasattr(self.trunk, "set_grad_checkpointing"):
            self.trunk.set_grad_checkpointing(enabled)


def load_pretrained_trunk(tower: TimmImageTower, base_dir: str | os.PathLike | None = None) -> str:
    """Fill ``tower.trunk`` with the weights its config names (``pretrained``); returns a note saying
    where they came from ("" when none are named)."""
    from ...checkpoints.base import CheckpointError
    from .sources import resolve_source
    from .weights import fit_by_name, fit_by_order, read_weights

    config = tower.config
    source = config.pretrained
    if not source:
        return ""
    if source == "timm":  # timm's default pretrained weights, through its hub download
        timm = import_timm()
        try:
            reference = timm.create_model(config.model_name, pretrained=True, **config.model_kwargs)
        except Exception as error:
            raise CheckpointError(
                f"could not get timm's pretrained weights for {config.model_name!r} ({type(error).__name__}: "
                f"{str(error)[:200]}). Without a network, download them elsewhere and name the file as pretrained"
            ) from error
        _remove_classifier(reference, config.pool)
        tower.trunk.load_state_dict(reference.state_dict(), strict=True)
        return f"image tower weights: timm's pretrained {config.model_name}"
    path = resolve_source(source, base_dir)
    if path.is_dir():
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{source!r}: {path} holds no model.safetensors or pytorch_model.bin")
        path = weights
    tensors = read_weights(path)
    where = f"{path.name} (the image tower's pretrained weights)"
    if config.weights_layout == "ordered":
        if path.suffix == ".safetensors":
            raise CheckpointError(
                f"{path.name}: weights_layout 'ordered' needs a file that keeps its tensors' order (a torch.save "
                "file); safetensors files store them sorted by name"
            )
        state = fit_by_order(tensors, tower.trunk, where)
    else:
        classifier = tower.trunk.pretrained_cfg.get("classifier") or ()
        drop = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        state = fit_by_name(tensors, tower.trunk, where, drop=drop)
    tower.trunk.load_state_dict(state, strict=True)
    return f"image tower weights: {source}"


def resolve_timm_config(config: TimmVisionConfig) -> list[str]:
    """Fill what the config leaves to the architecture (mean, std, interpolation from timm's pretrained
    config); returns notes. Raises ``ValueError`` for an unknown architecture."""
    timm = import_timm()
    check_architecture(timm, config.model_name)
    pretrained_cfg: dict[str, Any] = {}
    try:
        cfg = timm.models.get_pretrained_cfg(config.model_name)
        pretrained_cfg = cfg.to_dict() if cfg is not None else {}
    except Exception:  # architectures without a registered pretrained config
        pretrained_cfg = {}
    notes = []
    if config.mean is None:
        config.mean = tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        notes.append(f"image mean {list(config.mean)} from timm's config of {config.model_name}")
    if config.std is None:
        config.std = tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
        notes.append(f"image std {list(config.std)} from timm's config of {config.model_name}")
    if not config.interpolation:
        config.interpolation = str(pretrained_cfg.get("interpolation") or "bicubic")
    if not config.licence and pretrained_cfg.get("license") and config.pretrained == "timm":
        config.licence = str(pretrained_cfg["license"])
    return notes
