"""``convert`` and ``info``: checkpoints between formats, and what a checkpoint holds."""

from __future__ import annotations

import argparse
import json

from .base import CommandError, add_activation, add_command, add_json, print_json

#: :data:`cliplab.checkpoints.FORMATS` (kept here so that the parser does not import torch; a test
#: checks that the two agree), plus ONNX.
CONVERT_FORMATS = ("cliplab", "open_clip", "huggingface", "openai", "onnx")


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "convert",
        cmd_convert,
        "convert a checkpoint between formats",
        examples=[
            "cliplab convert ViT-B-32.pt exported/ --to huggingface",
            "cliplab convert runs/mini/model oc/ --to open_clip",
            "cliplab convert cliplab-mini onnx/ --to onnx",
            "cliplab convert cliplab-mini onnx-int8/ --to onnx --int8   # after `cliplab calibrate cliplab-mini ...`",
        ],
    )
    p.add_argument("source", help="checkpoint path or name")
    p.add_argument("dest", help="output folder (a .pt file for --to openai)")
    p.add_argument(
        "--to",
        choices=CONVERT_FORMATS,
        default="cliplab",
        help="a checkpoint format, or onnx: image_encoder.onnx + text_encoder.onnx (needs cliplab[onnx])",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --to onnx: int8 QDQ graphs from the model's calibration (see `cliplab calibrate`)",
    )
    add_json(p)
    add_activation(p)

    p = add_command(
        commands,
        "info",
        cmd_info,
        "describe a checkpoint: format, architecture, parameters",
        examples=["cliplab info cliplab-mini", "cliplab info exported/ --json"],
    )
    p.add_argument("checkpoint", help="checkpoint path or name (a model in $CLIPLAB_HOME/models, a hub name)")
    add_json(p)
    add_activation(p)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..api import load, resolve_model_path
    from ..quantize import Calibration, calibration_path

    if args.int8 and args.to != "onnx":
        raise CommandError("--int8 applies to --to onnx only: checkpoints keep the float32 weights")
    clip = load(args.source, device="cpu", quick_gelu=args.quick_gelu, precision="fp32")
    if args.int8:
        stored = calibration_path(resolve_model_path(args.source))
        if not stored.is_file():
            raise CommandError(
                f"no int8 calibration at {stored}: run `cliplab calibrate {args.source} IMAGES... --texts FILE`"
            )
        clip.calibration = Calibration.load(stored)
    written = clip.export_onnx(args.dest, int8=args.int8) if args.to == "onnx" else clip.save(args.dest, format=args.to)
    print(
        json.dumps({"source": args.source, "dest": str(written), "format": args.to, "int8": args.int8})
        if args.json
        else f"wrote {args.to}{' int8' if args.int8 else ''} {'encoders' if args.to == 'onnx' else 'checkpoint'} to {written}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..api import resolve_model_path
    from ..checkpoints import CheckpointError, build_model, read_checkpoint
    from ..quantize import Calibration, calibration_path

    path = resolve_model_path(args.checkpoint)
    ckpt = read_checkpoint(path, quick_gelu=args.quick_gelu)
    try:
        build_model(ckpt)  # the weights must fit the architecture the files describe
    except CheckpointError as error:
        raise CheckpointError(f"{args.checkpoint}: {error}") from None
    n_params = sum(v.numel() for k, v in ckpt.state_dict.items())
    info = {
        "path": args.checkpoint,
        "format": ckpt.source_format,
        "parameters": n_params,
        "config": ckpt.config.to_dict(),
        "preprocess": ckpt.preprocess,
        "notes": ckpt.notes,
    }
    stored = calibration_path(path)
    calibration = Calibration.load(stored) if stored.is_file() else None
    if calibration is not None:
        info["int8_calibration"] = {"path": str(stored), **calibration.to_dict()}
        del info["int8_calibration"]["ranges"]
    if args.json:
        print_json(info)
        return 0
    cfg = ckpt.config
    image, text = _tower_lines(cfg)
    print(
        f"{args.checkpoint}\n  format       {ckpt.source_format}\n  parameters   {n_params:,}\n"
        f"  image tower  {image}\n  text tower   {text}\n  embedding    {cfg.embed_dim}"
    )
    from ..model.configs import TextConfig, VisionConfig

    if isinstance(cfg.vision, VisionConfig) or isinstance(cfg.text, TextConfig):
        print(f"  activation   {'QuickGELU' if cfg.quick_gelu else 'GELU'}")
    for note in ckpt.notes:
        print(f"  note: {note}")
    if calibration is not None:
        print(
            f"  int8         calibrated {calibration.created or '(no date)'} on {calibration.images} images and "
            f"{calibration.texts} texts: {calibration.describe_layers()}"
        )
        for tower, q in calibration.quality.items():
            print(
                f"               int8 vs fp32 {tower}: cosine min {q['cosine_min']:.5f}, mean {q['cosine_mean']:.5f}"
                f" (first {int(q['count'])} calibration inputs)"
            )
    else:
        print("  int8         not calibrated (--precision int8 quantizes per token; see `cliplab calibrate`)")
    return 0


def _head(head) -> str:
    return (
        "no head"
        if head.type == "none"
        else f"{head.type} head" + (f", dropout {head.dropout}" if head.dropout else "")
    )


def _tower_lines(cfg) -> tuple[str, str]:
    """One line per tower for ``cliplab info``."""
    from ..model.configs import VisionConfig

    vision, text = cfg.vision, cfg.text
    if not isinstance(vision, VisionConfig):
        licence = f", licence {vision.licence}" if vision.licence else ""
        image = (
            f"timm {vision.model_name}, {vision.pool} pooling, {_head(vision.head)}, {vision.image_size} px{licence}"
        )
    elif vision.is_resnet:
        image = f"ResNet {list(vision.layers)} width {vision.width}, {vision.image_size} px"  # type: ignore[arg-type]
    else:
        image = f"ViT {vision.layers} layers, width {vision.width}, patch {vision.patch_size}, {vision.image_size} px"
    if hasattr(text, "hf_config"):
        licence = f", licence {text.licence}" if text.licence else ""
        layers = text.hf_config.get("num_hidden_layers", "?")
        line = f"Hugging Face {text.model_type} ({layers} layers, width {text.width}), {text.pooling} pooling"
        line += f", {_head(text.head)}, context {text.context_length}{licence}"
    else:
        line = f"{text.layers} layers, width {text.width}, context {text.context_length}"
    return image, line
