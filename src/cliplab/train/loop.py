"""The training loop, top to bottom: build -> (resume) -> for each step: micro-batches, loss,
backward, AdamW, clamp the temperature -> log, checkpoint, evaluate -> export the model."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..api import Pipeline, load
from ..checkpoints import write_checkpoint
from ..data import DataSpec, make_train_loader
from ..evaluate import evaluate
from ..model import CLIP, get_preset
from ..model.clip import MAX_LOGIT_SCALE
from ..paths import cliplab_home
from ..preprocess import Preprocessor
from ..tokenizer import Tokenizer
from .config import TrainConfig
from .distributed import World, init_world, mean_over_ranks, shutdown
from .locked import (
    CachedBatches,
    CachedContrastiveHead,
    FeaturePlan,
    apply_locks,
    augment_config,
    feature_plan,
    lr_scale_of,
    prepare_features,
    read_training_pairs,
    set_train_mode,
)
from .loss import ClipLoss, SigLipLoss
from .optim import learning_rate, make_optimizer
from .state import load_state, restore_rng, save_state
from .step import ContrastiveHead, accumulated_backward

METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # the step the run stands at
    seconds: float
    samples_per_second: float
    final_loss: float  # the last logged loss (also when this call trained nothing)
    eval: dict[str, Any] = field(default_factory=dict)
    steps_this_run: int = 0
    warnings: list[str] = field(default_factory=list)


def build_model(config: TrainConfig) -> tuple[CLIP, Preprocessor]:
    if config.model.init_from:
        pipeline = load(config.resolve(config.model.init_from), device="cpu", quick_gelu=config.model.quick_gelu)
        return pipeline.model, pipeline.preprocess
    arch = get_preset(config.model.arch)
    if config.model.image_size:
        arch.vision.image_size = config.model.image_size
    return CLIP(arch), Preprocessor(image_size=arch.vision.image_size)


class MetricsLog:
    """Append-only JSONL of metrics; on resume, lines past the restored step are dropped so the
    log continues as if the run had never stopped."""

    def __init__(self, path: Path, keep_up_to_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= keep_up_to_step
            ]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def prepare_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over an earlier run unless asked: ``resume`` continues it, ``overwrite`` removes it."""
    earlier = [name for name in ("checkpoints", "model", METRICS_FILE) if (out_dir / name).exists()]
    if not earlier or resume:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a training run ({', '.join(earlier)}): pass --resume to "
            "continue it, --overwrite to replace it, or choose another --out"
        )
    for name in earlier:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def last_logged_loss(path: Path) -> float:
    """The loss of the last step ``metrics.jsonl`` records (NaN if none)."""
    loss = float("nan")
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if "loss" in record:
                loss = float(record["loss"])
    return loss


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    stop_after_steps: int | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train (or fine-tune) CLIP as ``config`` says, writing to ``out_dir``:
    ``metrics.jsonl``, ``checkpoints/latest.pt`` (the resumable state) and ``model/`` (the final
    model in cliplab's format). An earlier run in ``out_dir`` is continued with ``resume`` and
    replaced with ``overwrite``; otherwise it is an error. ``stop_after_steps`` ends the process's
    work early (for tests), as a kill would, but cleanly."""
    out_dir = Path(out_dir)
    world = init_world(device)
    cfg = config.train
    if world.is_main:
        prepare_run_folder(out_dir, resume, overwrite)
    warnings = config.warnings()
    for warning in warnings if world.is_main else ():
        print(f"warning: {warning}", file=sys.stderr)
    torch.manual_seed(cfg.seed)

    model, preprocess = build_model(config)
    tokenizer = model.tokenizer or Tokenizer(context_length=model.context_length)  # a text tower's own, if any
    apply_locks(model, config)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if hasattr(model.visual, "patch_dropout"):
        model.visual.patch_dropout = cfg.patch_dropout
    loss_fn: nn.Module = (
        SigLipLoss(world.rank, world.size)
        if cfg.loss == "siglip"
        else ClipLoss(cfg.local_loss, cfg.gather_with_grad, world.rank, world.size)
    )
    if cfg.loss == "siglip" and not config.model.init_from:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(SigLipLoss.INITIAL_LOGIT_SCALE))
    model.to(world.device)
    loss_fn.to(world.device)
    optimizer = make_optimizer(
        list(model.named_parameters()) + list(loss_fn.named_parameters()), cfg, lr_scale_of(config)
    )

    step, prior_seconds, evaluation = 0, 0.0, {}
    state = load_state(out_dir / "checkpoints") if resume else None
    if state is not None:
        check_resumable(state["config"], config.to_dict(), out_dir)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        step, prior_seconds, evaluation = state["step"], state.get("train_seconds", 0.0), state.get("eval", {})
    elif resume and world.is_main:
        print(f"no training state in {out_dir / 'checkpoints'}: starting a new run")

    plan = feature_plan(config)
    for note in plan.notes if world.is_main else ():
        print(f"note: {note}", file=sys.stderr)
    head: nn.Module = CachedContrastiveHead(model, plan) if plan.any else ContrastiveHead(model)
    net: nn.Module = head
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(
            head, device_ids=[world.device.index] if world.device.type == "cuda" else None
        )

    spec = DataSpec(
        sources=[(config.resolve(str(src)), float(w)) for src, w in config.data.train],
        caption_filter=config.data.caption_filter,
        shuffle_buffer=config.data.shuffle_buffer,
        resample=config.data.resample,
        keep=config.resolve(config.data.keep) if config.data.keep else "",
    )
    augment = augment_config(config)
    if plan.any:
        batches = iter(cached_batches(config, model, preprocess, tokenizer, plan, world, step, progress))
    else:
        batches = iter(
            make_train_loader(
                spec,
                preprocess,
                tokenizer,
                cfg.batch_size,
                rank=world.rank,
                world_size=world.size,
                seed=cfg.seed,
                workers=config.data.workers,
                start_batch=step * cfg.accum_freq,
                augment=augment,
            )
        )
    use_bf16 = cfg.precision == "bf16"

    def autocast():
        return torch.autocast(world.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    log = MetricsLog(out_dir / METRICS_FILE, step, world.is_main)
    samples_per_step = cfg.batch_size * cfg.accum_freq * world.size
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and world.is_main), unit="step", desc="training")
    set_train_mode(model, config)
    start, start_step, loss_value = time.perf_counter(), step, float("nan")

    while step < cfg.steps:
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        micro = [tuple(t.to(world.device, non_blocking=True) for t in next(batches)) for _ in range(cfg.accum_freq)]
        loss = accumulated_backward(net, loss_fn, micro, autocast, ddp=world.size > 1)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1

        loss_value = float(mean_over_ranks(loss, world))
        elapsed = time.perf_counter() - start
        speed = (step - start_step) * samples_per_step / max(elapsed, 1e-9)
        temperature = float(model.logit_scale.detach().exp())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", scale=f"{temperature:.1f}", samples_s=f"{speed:.0f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.write(
                {
                    "step": step,
                    "loss": loss_value,
                    "lr": lr,
                    "logit_scale": temperature,
                    "samples_per_second": speed,
                    "samples": step * samples_per_step,
                    "time": prior_seconds + elapsed,
                }
            )
        eval_now = step == cfg.steps or (config.eval.every and step % config.eval.every == 0)
        if eval_now and world.is_main and (config.eval.zeroshot or config.eval.retrieval):
            evaluation = run_eval(model, preprocess, tokenizer, config, world)
            log.write({"step": step, "eval": evaluation})
            set_train_mode(model, config)
        if (step % cfg.checkpoint_every == 0 or step == cfg.steps) and world.is_main:
            save_state(
                out_dir / "checkpoints",
                step=step,
                model=model,
                loss_fn=loss_fn,
                optimizer=optimizer,
                config=config.to_dict(),
                train_seconds=prior_seconds + time.perf_counter() - start,
                evaluation=evaluation,
            )
        if stop_after_steps is not None and step >= stop_after_steps:
            break
    bar.close()

    seconds = time.perf_counter() - start
    finished_now = step == cfg.steps and (step > start_step or not (out_dir / "model").is_dir())
    if world.is_main and finished_now:
        model.eval()
        write_checkpoint(
            model,
            out_dir / "model",
            "cliplab",
            preprocess.config.to_dict(),
            metadata={
                "trained": True,
                "steps": step,
                "samples": step * samples_per_step,
                "train_seconds": round(prior_seconds + seconds, 1),
                "config": config.to_dict(),
                "eval": evaluation,
            },
        )
    shutdown(world)
    if step == start_step:
        loss_value = last_logged_loss(out_dir / METRICS_FILE)
    return TrainResult(
        out_dir,
        step,
        seconds,
        (step - start_step) * samples_per_step / max(seconds, 1e-9),
        loss_value,
        evaluation,
        steps_this_run=step - start_step,
        warnings=warnings,
    )


# Settings that fix the model and the data order: a resumed run must share them with the saved state.
RESUME_KEYS = {
    "model": ("arch", "init_from", "quick_gelu", "image_size"),
    "data": ("train", "caption_filter", "shuffle_buffer", "resample", "keep", "augment", "augment_options", "views"),
    "train": (
        "batch_size",
        "accum_freq",
        "seed",
        "loss",
        "lock_image",
        "lock_text",
        "unlock_image_blocks",
        "unlock_text_blocks",
        "feature_cache",
    ),
}

# Keys added later: runs saved before lack them and used these values.
RESUME_DEFAULTS: dict[tuple[str, str], Any] = {
    ("data", "keep"): "",
    ("data", "augment"): False,
    ("data", "augment_options"): {},
    ("data", "views"): 1,
    ("train", "unlock_image_blocks"): 0,
    ("train", "unlock_text_blocks"): 0,
    ("train", "feature_cache"): True,
}


def check_resumable(saved: dict[str, Any], current: dict[str, Any], out_dir: Path) -> None:
    """Refuse to resume a run whose state was written under a different model or data order."""
    differences = []
    for section, keys in RESUME_KEYS.items():
        for key in keys:
            absent = RESUME_DEFAULTS.get((section, key))  # keys added later: runs saved before lack them
            before, now = saved.get(section, {}).get(key, absent), current.get(section, {}).get(key, absent)
            if before != now:
                differences.append(f"{section}.{key}: {before!r} -> {now!r}")
    if differences:
        raise ValueError(
            f"cannot resume {out_dir}: its saved state used other settings ({'; '.join(differences)}). "
            "Resume with the same config, or train into a new --out folder."
        )


def cached_batches(
    config: TrainConfig,
    model: CLIP,
    preprocess: Preprocessor,
    tokenizer: Any,
    plan: FeaturePlan,
    world: World,
    step: int,
    progress: bool,
) -> CachedBatches:
    """The batches of a run whose locked towers read cached features (computed first where missing:
    by the first process, while the others wait, then read by all)."""
    import torch.distributed as dist

    distributed = world.size > 1 and dist.is_available() and dist.is_initialized()
    pairs = read_training_pairs(config)
    root = config.resolve(config.train.feature_cache_dir) if config.train.feature_cache_dir else ""
    root = root or str(cliplab_home() / "features")
    if distributed and not world.is_main:
        dist.barrier()
    image_views, text = prepare_features(
        config, model, preprocess, tokenizer, pairs, plan, world.device, root, progress and world.is_main
    )
    if distributed and world.is_main:
        dist.barrier()
    return CachedBatches(
        pairs,
        image_views,
        text,
        preprocess,
        tokenizer,
        config.train.batch_size,
        config.train.seed,
        augment_config(config),
        world.rank,
        world.size,
        start_batch=step * config.train.accum_freq,
    )


def run_eval(
    model: CLIP, preprocess: Preprocessor, tokenizer: Any, config: TrainConfig, world: World
) -> dict[str, Any]:
    model.eval()
    pipeline = Pipeline(model, preprocess, tokenizer, device=world.device, precision="fp32")  # exact, no copy
    return evaluate(
        pipeline,
        config.resolve(config.eval.zeroshot),
        config.resolve(config.eval.retrieval),
        config.eval.templates,
        config.eval.batch_size,
    )
