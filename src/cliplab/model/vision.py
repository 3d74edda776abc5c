"""The two image towers of the CLIP paper: a Vision Transformer and the modified ResNet."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .configs import VisionConfig
from .layers import LayerNorm, Transformer


class VisionTransformer(nn.Module):
    """Patches -> [class token; patch tokens] + positions -> ln_pre -> transformer -> ln_post(class
    token) @ proj."""

    def __init__(self, config: VisionConfig, output_dim: int, quick_gelu: bool = True) -> None:
        super().__init__()
        width, patch = config.width, config.patch_size
        assert patch is not None and isinstance(config.layers, int) and config.heads is not None
        self.input_resolution = config.image_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(config.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.patch_dropout = 0.0  # fraction of patch tokens dropped in training (FLIP, Li et al. 2023)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embedded input sequence ``[N, 1 + grid**2, width]`` before the transformer (fewer
        patches when patch dropout is active in training)."""
        x = self.conv1(pixels.to(self.conv1.weight.dtype))  # [N, width, grid, grid]
        x = x.flatten(2).transpose(1, 2)  # [N, grid**2, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if self.training and self.patch_dropout > 0:
            x = self._drop_patches(x)
        return self.ln_pre(x)

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the class token and a random subset of patch tokens per image."""
        n, length, width = x.shape
        keep = max(1, int((length - 1) * (1 - self.patch_dropout)))
        kept = torch.rand(n, length - 1, device=x.device).topk(keep, dim=-1).indices + 1
        patches = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, width))
        return torch.cat([x[:, :1], patches], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.tokens(pixels))
        return self.ln_post(x[:, 0]) @ self.proj

    def init_weights(self) -> None:
        self.transformer.init_weights()


class Bottleneck(nn.Module):
    """ResNet bottleneck whose strided convolutions are replaced by an average pool after the 3x3
    convolution (anti-aliasing), as in the CLIP paper."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Pools a feature map with one attention query: the mean of the spatial features (plus a
    position embedding) attends to every position, the result is projected to ``output_dim``."""

    def __init__(self, spatial_dim: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        head_dim = c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # [N, L, C] -> [N, heads, L, head_dim]
            return t.view(n, -1, self.heads, head_dim).transpose(1, 2)

        q = split(self.q_proj(x[:, :1]))
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, 1, head_dim]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """ResNet with a 3-convolution stem, anti-aliased strided convolutions and attention pooling."""

    def __init__(self, config: VisionConfig, output_dim: int) -> None:
        super().__init__()
        assert isinstance(config.layers, tuple) and config.heads is not None
        width = config.width
        self.input_resolution = config.image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, config.layers[0])
        self.layer2 = self._make_layer(width * 2, config.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, config.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, config.layers[3], stride=2)
        self.attnpool = AttentionPool2d(config.grid_size, width * 32, config.heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixels.to(self.conv1.weight.dtype))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)

    def init_weights(self) -> None:
        """OpenAI's initialisation: attention pool projections ~ N(0, 1/sqrt(C)), and the last BN of
        each residual branch zeroed so every block starts as the identity."""
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)
