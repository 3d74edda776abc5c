"""One optimisation step's forward and backward: the training head and gradient accumulation
that keeps every micro-batch's negatives."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..model import CLIP


class ContrastiveHead(nn.Module):
    """What one training forward computes: normalised image and text features and exp(logit_scale).
    Wrapped in DistributedDataParallel when there are several processes."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor):
        image = F.normalize(self.clip.encode_image(pixels).float(), dim=-1)
        text = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return image, text, self.clip.logit_scale.exp()


def accumulated_backward(net: nn.Module, loss_fn: nn.Module, micro_batches: list, autocast, ddp: bool) -> torch.Tensor:
    """Gradients of the loss over *all* micro-batches together (every micro-batch is a negative for
    every other). First embed every micro-batch without gradient and cache the features; then, for
    each micro-batch, recompute its features with gradient, put them among the cached ones and
    backpropagate the full loss. Summed, those backward passes give the big batch's gradient.
    The temperature (and SigLIP's bias) enter every pass, so only the last pass lets them learn:
    under DDP that is the pass whose gradients are synchronised.
    (Random patch dropout draws different masks in the cached and the recomputed forward, as in
    OpenCLIP; without it the sum is exact.)"""
    if len(micro_batches) == 1:
        with autocast():
            image, text, scale = net(*micro_batches[0])
        loss = loss_fn(image, text, scale)
        loss.backward()
        return loss.detach()

    with autocast(), torch.no_grad():
        cached = [net(pixels, tokens)[:2] for pixels, tokens in micro_batches]
    last = len(micro_batches) - 1
    for j, (pixels, tokens) in enumerate(micro_batches):
        sync = contextlib.nullcontext() if not ddp or j == last else net.no_sync()
        with sync:
            with autocast():
                image_j, text_j, scale = net(pixels, tokens)
            images = torch.cat([image_j if i == j else c[0] for i, c in enumerate(cached)])
            texts = torch.cat([text_j if i == j else c[1] for i, c in enumerate(cached)])
            loss = loss_fn(images, texts, scale if j == last else scale.detach(), learn_bias=j == last)
            loss.backward()
    return loss.detach()
