"""Infer a CLIP architecture from the shapes of an OpenAI-named state dict.

Shapes fix every size except the number of attention heads and the activation; for those the
OpenAI convention is used (64-wide heads, QuickGELU) and callers record that as a note.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from ..model.configs import CLIPConfig, TextConfig, VisionConfig
from .base import CheckpointError

# Tensors some published files carry beside the weights; they are not parameters.
NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")

_REQUIRED_TEXT_KEYS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")


def _count_indexed(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return len(indices)


def infer_config(state_dict: dict[str, torch.Tensor], head_width: int = 64, quick_gelu: bool = True) -> CLIPConfig:
    """The :class:`CLIPConfig` whose model has exactly these tensor shapes."""
    missing = [k for k in _REQUIRED_TEXT_KEYS if k not in state_dict]
    if missing:
        raise CheckpointError(f"not a CLIP state dict: missing {', '.join(missing)}")

    text_width = state_dict["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        width=text_width,
        heads=text_width // head_width,
        layers=_count_indexed(state_dict, "transformer.resblocks."),
        mlp_ratio=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
    )
    embed_dim = state_dict["text_projection"].shape[1]

    if "visual.proj" in state_dict:  # Vision Transformer
        width, _, patch, _ = state_dict["visual.conv1.weight"].shape
        grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=patch * grid,
            layers=_count_indexed(state_dict, "visual.transformer.resblocks."),
            width=width,
            patch_size=patch,
            heads=width // head_width,
            mlp_ratio=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        )
    elif "visual.attnpool.positional_embedding" in state_dict:  # modified ResNet
        counts = tuple(_count_indexed(state_dict, f"visual.layer{stage}.") for stage in range(1, 5))
        width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=grid * 32,
            layers=counts,  # type: ignore[arg-type]
            width=width,
            heads=width * 32 // head_width,
        )
    else:
        raise CheckpointError("not a CLIP state dict: no image tower (neither visual.proj nor visual.attnpool)")
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text, quick_gelu=quick_gelu)


def _few(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_shapes(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor | Sequence[int]], source: str
) -> None:
    """Raise a :class:`CheckpointError` naming the missing and unexpected tensors, or the first tensor
    (in name order) whose shape differs from ``expected`` (tensors or shapes)."""
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_few(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not match its architecture: " + "; ".join(problems))
    for key in sorted(expected):
        want = expected[key]
        want = tuple(want.shape) if isinstance(want, torch.Tensor) else tuple(want)
        have = tuple(tensors[key].shape)
        if have != want:
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {list(have)}, the architecture needs {list(want)}"
            )


def normalise_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile), drop
    non-parameter extras and attention-mask buffers, and cast floating tensors to float32."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if key in NON_PARAMETER_KEYS or key == "attn_mask" or key.endswith(".attn_mask"):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value.float() if value.is_floating_point() else value
    return out
