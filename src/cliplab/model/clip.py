"""CLIP: an image tower and a text tower projected into one embedding space, with a learned temperature.

With cliplab's own towers (ViT or modified ResNet; the causal text transformer) parameter names equal
OpenAI's, so its state dicts load without renaming. Towers from other libraries
(:mod:`cliplab.model.towers`) live under ``visual.`` (timm: ``visual.trunk.*``, ``visual.head.*``) and
``text.`` (transformers: ``text.transformer.*``, ``text.head.*``), as in OpenCLIP."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configs import CLIPConfig, TextConfig, VisionConfig
from .layers import LayerNorm, Transformer
from .vision import ModifiedResNet, VisionTransformer

INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        vision, text = config.vision, config.text
        if not isinstance(vision, VisionConfig):
            from .towers.timm_tower import TimmImageTower

            self.visual: Any = TimmImageTower(vision, config.embed_dim)
        elif vision.is_resnet:
            self.visual = ModifiedResNet(vision, config.embed_dim)
        else:
            self.visual = VisionTransformer(vision, config.embed_dim, config.quick_gelu)

        self.context_length = text.context_length
        self.has_text_tower = not isinstance(text, TextConfig)
        if isinstance(text, TextConfig):
            self.token_embedding = nn.Embedding(text.vocab_size, text.width)
            self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
            self.transformer = Transformer(text.width, text.layers, text.heads, text.mlp_ratio, config.quick_gelu)
            self.ln_final = LayerNorm(text.width)
            self.text_projection = nn.Parameter(torch.empty(text.width, config.embed_dim))
        else:
            from .towers.hf_tower import HFTextTower

            self.text: Any = HFTextTower(text, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))
        self.init_weights()

    def init_weights(self) -> None:
        """OpenAI's initialisation of cliplab's own towers, for training from scratch (towers from other
        libraries keep their library's initialisation, or their pretrained weights)."""
        if not self.has_text_tower:
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            self.transformer.init_weights()
            nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)
        if isinstance(self.config.vision, VisionConfig):
            self.visual.init_weights()

    @property
    def tokenizer(self) -> Any:
        """The text tower's own tokenizer (a :class:`~cliplab.model.towers.HFTokenizer`), or ``None`` for
        cliplab's text transformer, which takes OpenAI's BPE (:class:`cliplab.tokenizer.Tokenizer`)."""
        return self.text.tokenizer if self.has_text_tower else None

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def dtype(self) -> torch.dtype:
        return self.logit_scale.dtype if self.has_text_tower else self.token_embedding.weight.dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) image features ``[N, embed_dim]`` for pixels ``[N, 3, H, W]``."""
        return self.visual(pixels)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) text features ``[N, embed_dim]``, read at each sequence's
        end-of-text token (the highest id in the vocabulary, hence ``argmax``). Positions after the
        batch's last end token are not computed: the causal mask makes them irrelevant."""
        if token_ids.shape[1] > self.context_length:
            raise ValueError(
                f"token sequences of length {token_ids.shape[1]} exceed the context length {self.context_length}"
            )
        if self.has_text_tower:
            return self.text(token_ids)
        eot_positions = token_ids.argmax(dim=-1)
        # Under the causal mask nothing after the last EOT can affect any EOT feature: drop that padding.
        length = int(eot_positions.max()) + 1
        token_ids = token_ids[:, :length]
        x = self.token_embedding(token_ids) + self.positional_embedding[:length].to(self.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        eot = x[torch.arange(x.shape[0], device=x.device), eot_positions]
        return eot @ self.text_projection

    def forward(self, pixels: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities ``(logits_per_image [N, M], logits_per_text [M, N])``."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(token_ids), dim=-1)
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        return logits_per_image, logits_per_image.t()

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if self.has_text_tower:
            self.text.set_grad_checkpointing(enabled)
        else:
            self.transformer.grad_checkpointing = enabled
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enabled
        elif hasattr(self.visual, "set_grad_checkpointing"):
            self.visual.set_grad_checkpointing(enabled)
