"""``train``, ``eval`` and ``plot-run``: training runs and held-out evaluation."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .base import CommandError, add_command, add_json, add_model, load_pipeline, print_json

DEFAULT_EVAL_TEMPLATES = "{}|an emoji of {}.|a drawing of {}.|a picture of {}."


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "train",
        cmd_train,
        "train or fine-tune CLIP from a TOML/YAML config (torchrun for many processes)",
        description="Train or fine-tune CLIP as a config file says (docs: training). Data sources are CSV/TSV/JSONL "
        "tables (an image column: image, filepath, path, ...; a caption column: caption, text or title; "
        "relative image paths resolve against the table's folder), image folders with .txt captions, "
        "or WebDataset shards.",
        examples=[
            "cliplab train src/cliplab/recipes/cliplab-mini.toml --out runs/mini",
            "cliplab train recipe.toml --out runs/mini --resume",
            "cliplab train recipe.toml --out runs/ft --set model.init_from=ViT-B-32/openai --set train.lock_image=true",
            "torchrun --nproc_per_node 2 -m cliplab train recipe.toml --out runs/ddp",
        ],
    )
    p.add_argument("config", help="training config (.toml or .yaml); see recipes/ for examples")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoints/, model/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or started run already in --out")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--batch-size", type=int, help="override train.batch_size")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    add_json(p)

    p = add_command(
        commands,
        "eval",
        cmd_eval,
        "zero-shot accuracy and retrieval recall of a model on a data set",
        description="Zero-shot top-1/top-5 and image<->text recall@1/5/10 with their chance levels. "
        "Files are JSONL, CSV or TSV: --zeroshot needs an image and a concept column "
        "(classes: concepts.json beside it, or all concepts), --retrieval an image and a "
        "caption column.",
        examples=[
            "cliplab eval --zeroshot corpus/zeroshot_test.jsonl --retrieval corpus/retrieval_test.jsonl",
            "cliplab eval --model runs/mini/model --retrieval pairs.csv --json",
        ],
    )
    p.add_argument("--zeroshot", help="table of image + concept")
    p.add_argument("--retrieval", help="table of image + caption")
    p.add_argument("--templates", default=DEFAULT_EVAL_TEMPLATES, help="'|'-separated prompt templates")
    add_json(p)
    add_model(p)

    p = add_command(
        commands,
        "plot-run",
        cmd_plot_run,
        "loss, temperature and evaluation curves of a training run as a PNG",
        examples=["cliplab plot-run runs/mini"],
    )
    p.add_argument("run", help="run folder (or its metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default: RUN/curves.png)")


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.config import load_config
    from ..train.loop import train

    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    config = load_config(args.config, overrides)
    result = train(
        config, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device, progress=not args.json
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the first process reports
        return 0
    summary = {
        "out": str(result.out_dir),
        "steps": result.steps,
        "steps_this_run": result.steps_this_run,
        "seconds": round(result.seconds, 1),
        "samples_per_second": round(result.samples_per_second, 1),
        "final_loss": result.final_loss,
        "eval": result.eval,
        "warnings": result.warnings,
    }
    if args.json:
        print_json(summary)
        return 0
    if result.steps_this_run == 0:
        print(
            f"{args.out} already finished its {result.steps} steps; nothing to do (model in {Path(args.out) / 'model'})"
        )
    else:
        print(
            f"trained {result.steps_this_run} steps (to step {result.steps}) in {result.seconds:.0f} s "
            f"({result.samples_per_second:.0f} samples/s), final loss {result.final_loss:.3f}; "
            f"model in {Path(args.out) / 'model'}"
        )
    print_eval(result.eval)
    return 0


def print_eval(results: dict) -> None:
    if "zeroshot" in results:
        z = results["zeroshot"]
        print(
            f"zero-shot over {z['classes']} classes, {z['images']} images: top-1 {z['top1']:.1%} "
            f"(chance {z['chance_top1']:.2%}), top-5 {z['top5']:.1%} (chance {z['chance_top5']:.2%})"
        )
    if "retrieval" in results:
        r = results["retrieval"]
        print(
            f"retrieval over {r['pairs']} pairs: "
            + ", ".join(
                f"{d} R@{k} {r[f'{d}_R@{k}']:.1%}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)
            )
            + f" (chance R@10 {r['chance_R@10']:.2%})"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..templates import get_templates

    if not (args.zeroshot or args.retrieval):
        raise CommandError(
            "give --zeroshot FILE and/or --retrieval FILE (JSONL/CSV/TSV with image and concept/caption)"
        )
    results = evaluate(load_pipeline(args), args.zeroshot or "", args.retrieval or "", get_templates(args.templates))
    print_json(results) if args.json else print_eval(results)
    return 0


def cmd_plot_run(args: argparse.Namespace) -> int:
    from ..plotting import plot_run

    metrics = Path(args.run) / "metrics.jsonl" if Path(args.run).is_dir() else Path(args.run)
    if not metrics.is_file():
        raise CommandError(f"{metrics} does not exist: pass a run folder written by `cliplab train`")
    out = args.out or str(metrics.with_name("curves.png"))
    plot_run(metrics, out)
    print(out)
    return 0
