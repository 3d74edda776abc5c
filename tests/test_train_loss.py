"""The contrastive losses, against naive references and across processes and micro-batches."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_pixels, random_tokens

from cliplab.model import CLIP, CLIPConfig, TextConfig, VisionConfig
from cliplab.train.loss import ClipLoss, SigLipLoss
from cliplab.train.step import ContrastiveHead, accumulated_backward


def tiny_config() -> CLIPConfig:
    return CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, layers=2, width=64, patch_size=8, heads=2),
        text=TextConfig(width=64, heads=2, layers=2),
        quick_gelu=False,
    )


def naive_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """The paper's loss written pair by pair: for every image, -log of the softmax probability of
    its own caption among all captions; for every caption, the same over images; averaged."""
    n = len(image)
    total = 0.0
    for i in range(n):
        row = [scale * float(image[i] @ text[j]) for j in range(n)]
        col = [scale * float(text[i] @ image[j]) for j in range(n)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def naive_siglip_loss(image, text, scale, bias) -> float:
    n = len(image)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = (1 if i == j else -1) * (scale * float(image[i] @ text[j]) + bias)
            total += math.log(1 + math.exp(-z))
    return total / n


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_clip_loss_equals_the_naive_pairwise_reference():
    image, text = unit(7, 16, 0), unit(7, 16, 1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    assert float(ClipLoss()(image, text, scale)) == pytest.approx(naive_clip_loss(image, text, float(scale)), rel=1e-12)


def test_siglip_loss_equals_the_naive_pairwise_reference():
    image, text = unit(6, 16, 2), unit(6, 16, 3)
    loss_fn = SigLipLoss().double()
    value = float(loss_fn(image, text, torch.tensor(10.0, dtype=torch.float64)).detach())
    assert value == pytest.approx(naive_siglip_loss(image, text, 10.0, -10.0), rel=1e-12)


def test_perfectly_aligned_pairs_have_near_zero_loss():
    image = unit(5, 32, 4)
    assert float(ClipLoss()(image, image, torch.tensor(100.0, dtype=torch.float64))) < 1e-6


def gradients(model: CLIP) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def single_process_reference(pixels, tokens, local_loss=False):
    torch.manual_seed(0)
    model = CLIP(tiny_config())
    image, text, scale = ContrastiveHead(model)(pixels, tokens)
    loss = ClipLoss(local_loss=local_loss)(image, text, scale)
    loss.backward()
    return float(loss), gradients(model)


def _distributed_worker(rank: int, world_size: int, init_file: str, out: str, local_loss: bool):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = CLIP(tiny_config())
    net = torch.nn.parallel.DistributedDataParallel(ContrastiveHead(model))
    pixels, tokens = random_pixels(8, 32, seed=5), random_tokens(8, seed=6)
    part = slice(rank * 4, rank * 4 + 4)
    image, text, scale = net(pixels[part], tokens[part])
    loss = ClipLoss(local_loss=local_loss, rank=rank, world_size=world_size)(image, text, scale)
    loss.backward()
    summed = loss.detach().clone()
    dist.all_reduce(summed)
    if rank == 0:
        torch.save({"loss": float(summed) / world_size, "grads": gradients(model)}, out)
    dist.destroy_process_group()


@pytest.mark.parametrize("local_loss", [False, True])
def test_two_gloo_processes_match_one_process_on_the_whole_batch(local_loss, tmp_path):
    """Features gathered with gradient: 2 ranks x 4 pairs give the loss and gradients of 1 x 8."""
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(out), local_loss), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    pixels, tokens = random_pixels(8, 32, seed=5), random_tokens(8, seed=6)
    loss, grads = single_process_reference(pixels, tokens)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(result["grads"]) == set(grads)
    for name, grad in grads.items():
        # float32 sums in a different order: a few 1e-6 differences in the most-shared rows
        torch.testing.assert_close(
            result["grads"][name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_accumulated_micro_batches_give_the_big_batch_gradient(loss_name):
    """4 micro-batches of 4 with cached features = one batch of 16: same loss, same gradients,
    the temperature (and SigLIP bias) included."""
    pixels, tokens = random_pixels(16, 32, seed=7), random_tokens(16, seed=8)
    results = []
    for micro_size in (16, 4):
        torch.manual_seed(0)
        model = CLIP(tiny_config())
        loss_fn = ClipLoss() if loss_name == "clip" else SigLipLoss()
        micro = [(pixels[i : i + micro_size], tokens[i : i + micro_size]) for i in range(0, 16, micro_size)]
        loss = accumulated_backward(ContrastiveHead(model), loss_fn, micro, contextlib.nullcontext, ddp=False)
        grads = gradients(model)
        if loss_name == "siglip":
            grads["logit_bias"] = loss_fn.logit_bias.grad.clone()
        results.append((float(loss), grads))
    (big_loss, big), (acc_loss, acc) = results
    assert acc_loss == pytest.approx(big_loss, rel=1e-5)
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_ranking_metrics_count_ties_and_nan_as_misses():
    """A collapsed model (all scores equal) or a diverged one (NaN) must not look perfect."""
    import numpy as np

    from cliplab.evaluate import _top_k_hits

    targets = np.arange(4)
    assert _top_k_hits(np.zeros((4, 4)), targets, 1) == 0.0
    assert _top_k_hits(np.full((4, 4), np.nan), targets, 5) == 0.0
    assert _top_k_hits(np.eye(4), targets, 1) == 1.0
    assert _top_k_hits(np.zeros((4, 4)), targets, 4) == 1.0  # every column is within the top 4
