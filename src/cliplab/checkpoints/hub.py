"""Resolve published model names (``ViT-B-32/openai``, ``hf-hub:org/repo``, ``openai/clip-vit-base-patch32``)
to files in the Hugging Face hub cache, downloading them when a network is there."""

from __future__ import annotations

import os
from pathlib import Path

from ..model.configs import canonical_name
from .base import CheckpointError

# OpenAI's weights as OpenCLIP republished them on the hub (safetensors, OpenAI key names).
OPENAI_HUB_REPOS = {
    "RN50": "timm/resnet50_clip.openai",
    "RN101": "timm/resnet101_clip.openai",
    "RN50x4": "timm/resnet50x4_clip.openai",
    "RN50x16": "timm/resnet50x16_clip.openai",
    "RN50x64": "timm/resnet50x64_clip.openai",
    "ViT-B-32": "timm/vit_base_patch32_clip_224.openai",
    "ViT-B-16": "timm/vit_base_patch16_clip_224.openai",
    "ViT-L-14": "timm/vit_large_patch14_clip_224.openai",
    "ViT-L-14-336": "timm/vit_large_patch14_clip_336.openai",
}
OPEN_CLIP_FILES = ["open_clip_config.json", "open_clip_model.safetensors"]
HF_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]


def published_names() -> list[str]:
    """The model names that resolve through the hub without an organisation prefix."""
    return [f"{arch}/openai" for arch in OPENAI_HUB_REPOS] + [
        "openai/clip-vit-base-patch32",
        "openai/clip-vit-base-patch16",
        "openai/clip-vit-large-patch14",
    ]


def hub_name_to_repo(name: str) -> tuple[str, list[str]]:
    """The hub repository and files for a model name, or raise ``KeyError`` if it is no hub name."""
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:") :], OPEN_CLIP_FILES
    arch, _, tag = name.rpartition("/")
    arch = canonical_name(arch)
    if tag == "openai" and arch in OPENAI_HUB_REPOS:
        return OPENAI_HUB_REPOS[arch], OPEN_CLIP_FILES
    if name.startswith("openai/clip-vit"):
        return name, HF_FILES
    raise KeyError(name)


def download(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    cache_dir = str(cache_dir) if cache_dir is not None else None
    """A local folder holding the files of ``name``: from the hub cache, or downloaded into it."""
    repo, files = hub_name_to_repo(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=files, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # not cached yet
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=files, cache_dir=cache_dir))
    except Exception as error:
        raise CheckpointError(
            f"could not get {name!r} from the Hugging Face hub ({type(error).__name__}: {str(error)[:200]}). "
            f"Without a network, download the files {files} of https://huggingface.co/{repo} on another "
            f"machine, put them in a folder here and pass that folder (e.g. cliplab.load('./{repo.split('/')[-1]}') "
            f"or --model ./{repo.split('/')[-1]})."
        ) from error
