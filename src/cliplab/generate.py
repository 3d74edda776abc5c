"""CLIP-guided image generation: optimise an image until its CLIP embedding approaches a text's.

The image is parameterised so that gradient steps give natural-looking pictures rather than
adversarial noise (as in Lucid / "feature visualisation"): its pixels are the inverse FFT of a
spectrum whose coefficients are scaled by 1/frequency (so low frequencies move first), in a
decorrelated colour space mapped to RGB by the square root of natural images' colour covariance,
squashed into [0, 1] with a sigmoid. Each step embeds several random crops ("cutouts") of the image,
each randomly flipped, jittered in colour and noised, resized to the model's input size, and lowers
their mean squared spherical distance to the text embedding. All randomness comes from one seeded
``torch.Generator``: a given seed gives the same image (on the same machine and torch build).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .api import Pipeline
from .images import ImageInput, load_image, to_rgb
from .plotting import plot_similarity_curve

# Square root of the colour covariance of natural images (Lucid's ``color_correlation_svd_sqrt``),
# its columns scaled to unit maximum norm: decorrelated channels -> RGB.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR_SQRT = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


class FourierImage(torch.nn.Module):
    """An RGB image ``[1, 3, size, size]`` in [0, 1] parameterised by a scaled, colour-decorrelated
    Fourier spectrum. ``init`` (an image) starts the optimisation from that picture instead of a
    faint random spectrum."""

    scale: torch.Tensor  # a buffer: 1/frequency scaling of the spectrum

    def __init__(
        self,
        size: int,
        generator: torch.Generator,
        decay: float = 1.0,
        init: ImageInput | None = None,
        init_std: float = 0.01,
    ):
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        frequency = torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / size)
        self.register_buffer("scale", 0.25 / frequency**decay, persistent=False)  # Lucid's scaling
        self.register_buffer("colour", _COLOUR_SQRT.clone(), persistent=False)
        self.size = size
        spectrum = torch.randn(3, size, size // 2 + 1, 2, generator=generator) * init_std
        if init is not None:
            spectrum = self._spectrum_of(init)
        self.spectrum = torch.nn.Parameter(spectrum)

    def forward(self) -> torch.Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        decorrelated = torch.fft.irfft2(coefficients, s=(self.size, self.size), norm="ortho")
        rgb = torch.einsum("ij,jhw->ihw", self.colour, decorrelated)
        return torch.sigmoid(rgb)[None]

    def _spectrum_of(self, image: ImageInput) -> torch.Tensor:
        """The spectrum whose forward pass gives ``image`` (its pixels clamped away from 0 and 1)."""
        picture = to_rgb(image if isinstance(image, Image.Image) else load_image(image))
        picture = picture.resize((self.size, self.size), Image.Resampling.BICUBIC)
        rgb = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)
        logits = torch.logit(rgb.clamp(0.02, 0.98))
        decorrelated = torch.einsum("ij,jhw->ihw", torch.linalg.inv(_COLOUR_SQRT), logits)
        coefficients = torch.fft.rfft2(decorrelated, norm="ortho") / self.scale
        return torch.view_as_real(coefficients).contiguous()


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between the directions of ``a`` and ``b`` (last dimension)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def cutouts(
    image: torch.Tensor,
    n: int,
    out_size: int,
    generator: torch.Generator,
    min_fraction: float = 0.5,
    jitter: float = 0.05,
    noise: float = 0.02,
) -> torch.Tensor:
    """``n`` random square crops of ``image`` ``[1, 3, H, W]`` (sides ``min_fraction``..1 of the
    shorter side), each resized to ``out_size``, randomly flipped, with per-crop brightness jitter
    and pixel noise, still in [0, 1]."""
    _, _, height, width = image.shape
    short = min(height, width)
    crops = []
    for _ in range(n):
        side = int(short * (min_fraction + (1 - min_fraction) * float(torch.rand((), generator=generator))))
        x = int(torch.randint(0, width - side + 1, (), generator=generator))
        y = int(torch.randint(0, height - side + 1, (), generator=generator))
        crop = F.interpolate(
            image[:, :, y : y + side, x : x + side],
            size=(out_size, out_size),
            mode="bilinear",
            align_corners=False,
            antialias=side > out_size,
        )
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
    batch = torch.cat(crops)
    shift = (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 2 * jitter  # drawn on the CPU: device-independent
    grain = noise * torch.randn(batch.shape, generator=generator)
    return (batch + shift.to(batch.device) + grain.to(batch.device)).clamp(0, 1)


@dataclass
class GenerationResult:
    image: Image.Image
    prompt: str
    seed: int
    similarities: list[float]  # cosine of the whole image to the text, per step (before the update)
    snapshots: list[tuple[int, Image.Image]] = field(default_factory=list)  # (step, image)

    @property
    def final_similarity(self) -> float:
        return self.similarities[-1]

    def save(self, path: str | os.PathLike) -> dict[str, str]:
        """Write the image to ``path`` and, beside it, ``*_strip.png`` (the intermediate images) and
        ``*_curve.png`` (the similarity curve); returns the three paths."""
        path = Path(path)
        paths = {
            "image": str(path),
            "strip": str(path.with_name(f"{path.stem}_strip.png")),
            "curve": str(path.with_name(f"{path.stem}_curve.png")),
        }
        self.image.save(path)
        save_strip(self.snapshots, paths["strip"])
        plot_similarity_curve(self.similarities, self.prompt, paths["curve"])
        return paths


def text_target(pipeline: Pipeline, prompt: str | Sequence[str]) -> torch.Tensor:
    """The unit text embedding to steer towards: the mean of the prompts' embeddings, renormalised."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    mean = torch.from_numpy(pipeline.embed_texts(prompts)).mean(0)
    return F.normalize(mean, dim=-1).to(pipeline.device)


def generate(
    pipeline: Pipeline,
    prompt: str | Sequence[str],
    *,
    steps: int = 200,
    seed: int = 0,
    size: int | None = None,
    cutouts_per_step: int = 16,
    lr: float = 0.05,
    init: ImageInput | None = None,
    snapshots: int = 8,
    progress: bool = False,
) -> GenerationResult:
    """Optimise an image of ``size`` px (default: twice the model's input) towards ``prompt`` (or
    towards the mean embedding of several prompts, a prompt ensemble).

    ``snapshots`` intermediate images are kept, evenly spaced, the last being the result.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("give a non-empty text prompt")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model_size = pipeline.preprocess.image_size
    size = size or 2 * model_size
    generator = torch.Generator().manual_seed(seed)
    image = FourierImage(size, generator, init=init).to(pipeline.device)
    mean = torch.tensor(pipeline.preprocess.config.mean, device=pipeline.device).view(1, 3, 1, 1)
    std = torch.tensor(pipeline.preprocess.config.std, device=pipeline.device).view(1, 3, 1, 1)
    target = text_target(pipeline, prompts)
    model = pipeline.model
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # gradients flow to the image only
        p.requires_grad_(False)
    try:
        similarities, kept = _optimise(
            model, image, target, steps, cutouts_per_step, lr, snapshots, generator, (mean, std), progress
        )
    finally:
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        pixels = image()
    final = to_pil(pixels)
    if snapshots:
        kept.append((steps, final))
    return GenerationResult(final, " | ".join(prompts), seed, similarities, kept)


def _optimise(
    model,
    image: FourierImage,
    target: torch.Tensor,
    steps: int,
    n_cutouts: int,
    lr: float,
    snapshots: int,
    generator: torch.Generator,
    norm: tuple[torch.Tensor, torch.Tensor],
    progress: bool,
) -> tuple[list[float], list[tuple[int, Image.Image]]]:
    """The optimisation loop; returns the similarity of the whole image per step (plus the final
    one) and the snapshots."""
    mean, std = norm
    model_size = model.image_size
    optimiser = torch.optim.Adam(image.parameters(), lr=lr)
    keep = {round(i * steps / snapshots) for i in range(snapshots)} if snapshots else set()
    similarities: list[float] = []
    kept: list[tuple[int, Image.Image]] = []
    for step in tqdm(range(steps + 1), desc="generating", unit="step", disable=not progress):
        pixels = image()
        with torch.no_grad():
            whole = F.interpolate(pixels, size=(model_size, model_size), mode="bilinear", antialias=True)
            similarities.append(float(F.cosine_similarity(model.encode_image((whole - mean) / std), target[None])))
        if step == steps:
            break
        if step in keep:
            kept.append((step, to_pil(pixels)))
        crops = cutouts(pixels, n_cutouts, model_size, generator).to(target.device)
        loss = spherical_distance(model.encode_image((crops - mean) / std), target[None]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return similarities, kept


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """``[1, 3, H, W]`` in [0, 1] -> an 8-bit RGB image."""
    array = (pixels.detach()[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def save_strip(snapshots: Sequence[tuple[int, Image.Image]], path: str | os.PathLike, tile: int = 96) -> None:
    """The intermediate images side by side, each captioned with its step."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (tile * max(1, len(snapshots)), tile + 14), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (step, picture) in enumerate(snapshots):
        strip.paste(picture.resize((tile, tile), Image.Resampling.BICUBIC), (i * tile, 14))
        draw.text((i * tile + 3, 1), f"step {step}", fill=(0, 0, 0))
    strip.save(path)


__all__ = ["FourierImage", "GenerationResult", "cutouts", "generate", "spherical_distance"]
