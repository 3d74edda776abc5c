"""The projection head of a tower from another library: its features into the shared embedding space."""

from __future__ import annotations

import torch
from torch import nn

from .configs import HeadConfig


def default_hidden(head: HeadConfig, in_dim: int, embed_dim: int, tower: str) -> tuple[int, bool]:
    """The MLP's hidden width and first-layer bias: as configured, else OpenCLIP's for the tower
    (timm image towers: ``2 * embed_dim`` with bias; Hugging Face text towers: ``(width + embed_dim) // 2``
    without)."""
    if tower == "vision":
        hidden, bias = 2 * embed_dim, True
    else:
        hidden, bias = (in_dim + embed_dim) // 2, False
    return head.hidden_dim or hidden, bias if head.hidden_bias is None else head.hidden_bias


class ProjectionHead(nn.Module):
    """``linear``: dropout -> ``proj``; ``mlp``: ``fc1`` -> GELU -> dropout -> ``fc2``; ``none``: identity."""

    def __init__(self, config: HeadConfig, in_dim: int, embed_dim: int, tower: str) -> None:
        super().__init__()
        self.kind = config.type
        if config.type == "none":
            if in_dim != embed_dim:
                raise ValueError(
                    f"a {tower} tower without a projection head needs its width ({in_dim}) to equal embed_dim "
                    f"({embed_dim}): choose head type 'linear' or 'mlp', or embed_dim = {in_dim}"
                )
            return
        self.drop = nn.Dropout(config.dropout)
        if config.type == "linear":
            self.proj = nn.Linear(in_dim, embed_dim, bias=config.bias)
            nn.init.normal_(self.proj.weight, std=in_dim**-0.5)
        else:
            hidden, hidden_bias = default_hidden(config, in_dim, embed_dim, tower)
            self.fc1 = nn.Linear(in_dim, hidden, bias=hidden_bias)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, embed_dim, bias=config.bias)
        if config.bias or config.type == "mlp":
            for module in self.modules():
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        if self.kind == "linear":
            return self.proj(self.drop(x))
        return self.fc2(self.drop(self.act(self.fc1(x))))
