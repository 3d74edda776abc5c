"""AdamW with decay only on weight matrices, and a warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .config import TrainSection


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, the class embedding and the temperature are not decayed."""
    return param.ndim < 2 or "logit_scale" in name or "logit_bias" in name


def make_optimizer(
    named_params: list[tuple[str, nn.Parameter]],
    cfg: TrainSection,
    lr_scale: Callable[[str], float] = lambda name: 1.0,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in groups by weight decay and learning-rate scale
    (``lr_scale(name)``: a multiple of ``cfg.lr``, kept in each group's ``lr_scale``)."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    keyed: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for n, p in trainable:
        keyed.setdefault((no_weight_decay(n, p), lr_scale(n)), []).append(p)
    groups = [
        {"params": params, "weight_decay": 0.0 if no_decay else cfg.weight_decay, "lr_scale": scale}
        for (no_decay, scale), params in sorted(keyed.items())
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(float(cfg.betas[0]), float(cfg.betas[1])), eps=cfg.eps)


def learning_rate(step: int, cfg: TrainSection) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
