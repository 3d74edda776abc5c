"""The training state on disk: everything ``--resume`` needs to continue a run exactly.

One file, ``checkpoints/latest.pt``, replaced atomically (written beside, fsynced, renamed), so a
kill at any moment leaves either the previous state or the new one. It holds only tensors and plain
Python values and is read back with ``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "latest.pt"


def rng_state() -> dict[str, Any]:
    """The RNG states training draws from. Only rank 0 saves; every rank is seeded alike and draws
    alike, so rank 0's CPU state and its current-device CUDA state stand for all ranks."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_state(
    folder: Path,
    *,
    step: int,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    train_seconds: float,
    evaluation: dict[str, Any],
) -> Path:
    path = folder / STATE_FILE
    atomic_torch_save(
        {
            "step": step,
            "train_seconds": train_seconds,
            "eval": evaluation,
            "model": model.state_dict(),
            "loss": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "config": config,
        },
        path,
    )
    return path


def load_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
