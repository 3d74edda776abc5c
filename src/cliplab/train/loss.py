"""Contrastive losses over a batch of N image–text pairs.

CLIP (Radford et al. 2021): the N x N cosine similarities times exp(logit_scale) are logits; a
cross-entropy over rows (image -> text) and over columns (text -> image), averaged. With several
processes, every rank's features are gathered *with gradient* so each sees all N negatives.
SigLIP (Zhai et al. 2023): an independent sigmoid per pair, positives on the diagonal.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def gather_features(features: torch.Tensor, rank: int, world_size: int, with_grad: bool = True) -> torch.Tensor:
    """Concatenate every rank's ``features`` in rank order.

    ``with_grad``: gradients flow back to the rank that produced each row (all_gather's backward
    sums them there). Without it, other ranks' rows are constants and only the local rows carry
    gradient, as in the original CLIP implementation; under DDP's averaging that scales the
    gradient by 1/world_size (as OpenCLIP does), which AdamW is insensitive to.
    """
    if world_size == 1:
        return features
    if with_grad:
        import torch.distributed.nn

        return torch.cat(torch.distributed.nn.all_gather(features), dim=0)
    gathered = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(gathered, features.detach())
    gathered[rank] = features
    return torch.cat(gathered, dim=0)


class ClipLoss(nn.Module):
    """Symmetric cross-entropy over scaled cosine similarities.

    ``local_loss``: each rank computes only its own rows and columns against all gathered features
    (N/world x N logits instead of N x N); the sum over ranks is the same loss and gradient.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def logits(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor):
        all_image = gather_features(image, self.rank, self.world_size, self.gather_with_grad)
        all_text = gather_features(text, self.rank, self.world_size, self.gather_with_grad)
        if self.local_loss:
            labels = torch.arange(image.shape[0], device=image.device) + self.rank * image.shape[0]
            return logit_scale * image @ all_text.T, logit_scale * text @ all_image.T, labels
        labels = torch.arange(all_image.shape[0], device=image.device)
        logits_per_image = logit_scale * all_image @ all_text.T
        return logits_per_image, logits_per_image.T, labels

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, learn_bias: bool = True
    ) -> torch.Tensor:
        """``image``, ``text``: L2-normalised features ``[n, d]``; ``logit_scale``: exp of the
        learned log-temperature. (``learn_bias`` exists for SigLIP's interface and is unused.)"""
        logits_per_image, logits_per_text, labels = self.logits(image, text, logit_scale)
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        # With local_loss every rank holds 1/world of the rows; DDP averages gradients over ranks,
        # so the mean of the ranks' losses is the full batch's loss.
        return loss


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss with a learned bias (SigLIP). The bias lives here, not in the model:
    it does not change rankings, so exported models do not need it. Gathers all features (with
    gradient) and computes the full N x N loss on every rank."""

    INITIAL_LOGIT_SCALE = 10.0  # SigLIP starts at t' = log 10
    INITIAL_LOGIT_BIAS = -10.0

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.logit_bias = nn.Parameter(torch.tensor(self.INITIAL_LOGIT_BIAS))

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, learn_bias: bool = True
    ) -> torch.Tensor:
        """As :class:`ClipLoss`; ``learn_bias=False`` treats the bias as a constant (used by
        gradient accumulation so the bias gets one gradient per step, not one per micro-batch)."""
        all_image = gather_features(image, self.rank, self.world_size)
        all_text = gather_features(text, self.rank, self.world_size)
        bias = self.logit_bias if learn_bias else self.logit_bias.detach()
        logits = logit_scale * all_image @ all_text.T + bias
        signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
        return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
