"""``detect``, ``explain`` and ``generate``: where a text is in an image, and images steered by a text."""

from __future__ import annotations

import argparse
import json

from .base import CommandError, add_command, add_json, add_model, image_files, load_pipeline, print_json


def _window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scales",
        default=None,
        help="window sides as fractions of the image's shorter side, comma-separated (default: 0.2,0.3,0.4,0.55,0.75)",
    )
    p.add_argument("--overlap", type=float, default=0.75, help="overlap of neighbouring windows")
    p.add_argument(
        "--background",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="neutral prompts the queries are contrasted with (default: 'background', 'an empty "
        "background', 'a plain texture', 'a blank image')",
    )
    add_json(p)
    add_model(p)


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "detect",
        cmd_detect,
        "find where texts are in an image: sliding-window boxes and heatmaps",
        examples=[
            'cliplab detect scene.png "a fluffy cat" "a butterfly" --out overlay.png',
            'cliplab detect scene.png "a red ball" --threshold 0.3 --json',
        ],
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="what to look for, e.g. 'a fluffy cat'")
    p.add_argument("--out", help="save the heatmap overlay with boxes and labels (PNG)")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum box score, a probability")
    p.add_argument("--max-boxes", type=int, default=3, help="boxes per query at most")
    _window_args(p)

    p = add_command(
        commands,
        "explain",
        cmd_explain,
        "a relevance map: where in an image the model sees a text",
        examples=['cliplab explain scene.png "a fluffy cat" --out relevance.png'],
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--out", required=True, help="PNG: the image beside its relevance map")
    _window_args(p)

    p = add_command(
        commands,
        "generate",
        cmd_generate,
        "generate an image by steering it towards a text until CLIP agrees",
        examples=['cliplab generate "a red apple" --steps 150 --seed 0 --out apple.png'],
    )
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--out", required=True, help="the image (PNG); *_strip.png and *_curve.png are written beside it")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same image")
    p.add_argument("--size", type=int, default=None, help="side in pixels (default: twice the model's input)")
    p.add_argument("--cutouts", type=int, default=16, help="random crops per step")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate")
    p.add_argument("--init", help="start from this image instead of noise")
    add_json(p)
    add_model(p)


def _detect_options(args: argparse.Namespace) -> dict:
    options: dict = {"overlap": args.overlap, "progress": not args.json}
    if args.scales is not None:
        try:
            scales = tuple(float(v) for v in args.scales.split(","))
        except ValueError:
            scales = ()
        if not scales or any(not 0 < v <= 1 for v in scales):
            raise CommandError(f"--scales must be comma-separated fractions in (0, 1], got {args.scales}")
        options["scales"] = scales
    if args.background is not None:
        options["background"] = args.background
    return options


def cmd_detect(args: argparse.Namespace) -> int:
    from ..detect import detect, draw_overlay

    image = image_files([args.image])[0]
    options = _detect_options(args)
    result = detect(
        load_pipeline(args), image, args.queries, threshold=args.threshold, max_boxes=args.max_boxes, **options
    )
    if args.out:
        draw_overlay(image, result, args.out)
    if args.json:
        print_json({"image": image, "boxes": [d.to_dict() for d in result.boxes], "overlay": args.out})
    else:
        for d in result.boxes:
            print(f"{d.score:6.3f}  {d.label}  [{', '.join(map(str, d.box))}]")
        if not result.boxes:
            print(f"no box scored {args.threshold} or more (try a lower --threshold)")
        if args.out:
            print(f"overlay written to {args.out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from ..detect import relevance_map, save_relevance

    image = image_files([args.image])[0]
    options = _detect_options(args)
    heatmap = relevance_map(load_pipeline(args), image, args.text, **options)
    save_relevance(image, heatmap, args.text, args.out)
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    summary = {
        "image": image,
        "text": args.text,
        "out": args.out,
        "peak": [int(x), int(y)],
        "max": round(float(heatmap.max()), 6),
        "min": round(float(heatmap.min()), 6),
    }
    print(
        json.dumps(summary, indent=2)
        if args.json
        else f"relevance of {args.text!r}: peak at x={x}, y={y} ({heatmap.max():.3f}); map written to {args.out}"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..generate import generate

    if args.init:
        image_files([args.init])
    result = generate(
        load_pipeline(args),
        args.prompt,
        steps=args.steps,
        seed=args.seed,
        size=args.size,
        cutouts_per_step=args.cutouts,
        lr=args.lr,
        init=args.init,
        progress=not args.json,
    )
    paths = result.save(args.out)
    summary = {
        **paths,
        "prompt": args.prompt,
        "seed": args.seed,
        "steps": args.steps,
        "start_similarity": round(result.similarities[0], 6),
        "final_similarity": round(result.final_similarity, 6),
    }
    print(
        json.dumps(summary, indent=2)
        if args.json
        else f"cosine to {args.prompt!r}: {result.similarities[0]:.3f} -> {result.final_similarity:.3f}\n"
        f"image {paths['image']}, intermediates {paths['strip']}, curve {paths['curve']}"
    )
    return 0
