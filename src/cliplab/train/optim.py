"""AdamW with decay only on weight matrices, and a warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainSection


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, the class embedding and the temperature are not decayed."""
    return param.ndim < 2 or "logit_scale" in name or "logit_bias" in name


def make_optimizer(named_params: list[tuple[str, nn.Parameter]], cfg: TrainSection) -> torch.optim.AdamW:
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if not no_weight_decay(n, p)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in trainable if no_weight_decay(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def learning_rate(step: int, cfg: TrainSection) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
