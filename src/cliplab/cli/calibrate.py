"""``calibrate``: static int8 ranges for a model, measured on images and texts, stored beside the model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .base import CommandError, add_command, add_json, print_json


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "calibrate",
        cmd_calibrate,
        "calibrate a model for --precision int8 on sample images and texts",
        description="Run sample images and texts through the float32 model, record the input range of "
        "every int8 layer, and store them beside the model (int8_calibration.json in a model folder, "
        "NAME.int8_calibration.json beside a file), with the cosine of int8 to float32 features on those "
        "inputs. --precision int8 then quantizes activations with these fixed ranges (fast); without a "
        "calibration it quantizes them per token at run time (slower). Use inputs like the ones the "
        "model will see: a few hundred images and texts are enough.",
        examples=[
            "cliplab calibrate cliplab-mini photos/ --texts queries.txt",
            "cliplab calibrate ./ViT-B-32.pt samples/*.jpg --texts captions.jsonl --json",
            "cliplab embed --images photos/*.jpg --out v.npy --model ./ViT-B-32.pt --precision int8",
        ],
    )
    p.add_argument("model", help="checkpoint path or name (a model in $CLIPLAB_HOME/models, a hub name)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument(
        "--texts", help="a file of texts: one per line, or JSONL records with 'text' (or 'caption')", default=None
    )
    p.add_argument("--out", help="where to write the calibration (default: beside the model)")
    p.add_argument("--max-images", type=int, default=1000, help="use at most this many images (evenly spread)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    add_json(p)


def _image_paths(roots: list[str], limit: int) -> list[str]:
    from ..images import IMAGE_EXTENSIONS

    paths: list[str] = []
    for root in roots:
        path = Path(root)
        if path.is_file():
            paths.append(str(path))
        elif path.is_dir():
            for folder, subdirs, files in os.walk(path):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                paths += [
                    os.path.join(folder, name)
                    for name in sorted(files)
                    if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
                ]
        else:
            raise FileNotFoundError(f"no such image file or folder: {root}")
    if roots and not paths:
        raise CommandError(f"no image files under {', '.join(roots)}")
    if len(paths) > limit:  # evenly spread over the sorted list, so that every folder is represented
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    return paths


def _texts(path: str | None) -> list[str]:
    if not path:
        return []
    from ..files import read_jsonl

    if path.endswith((".jsonl", ".json")):
        texts = [str(r.get("text", r.get("caption", ""))) for r in read_jsonl(path)]
    else:
        texts = Path(path).read_text(encoding="utf-8-sig").splitlines()
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise CommandError(f"{path} holds no texts")
    return texts


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..api import load, resolve_model_path
    from ..quantize import calibration_path

    images, texts = _image_paths(args.images, args.max_images), _texts(args.texts)
    if not images and not texts:
        raise CommandError("give sample images (files or folders) and/or --texts FILE to calibrate on")
    clip = load(args.model, device=args.device, precision="fp32")
    calibration = clip.calibrate(images, texts, progress=not args.json)
    out = Path(args.out) if args.out else calibration_path(resolve_model_path(args.model))
    calibration.save(out)
    if args.json:
        print_json({"model": args.model, "calibration": str(out), **calibration.to_dict()})
        return 0
    print(f"calibrated {args.model} on {len(images)} images and {len(texts)} texts: {calibration.describe_layers()}")
    for tower, q in calibration.quality.items():
        print(
            f"  int8 vs fp32 {tower}: cosine min {q['cosine_min']:.5f}, mean {q['cosine_mean']:.5f} "
            f"(first {int(q['count'])} inputs)"
        )
    print(f"wrote {out}; use it with --precision int8")
    return 0
