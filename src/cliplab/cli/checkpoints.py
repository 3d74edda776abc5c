"""``convert`` and ``info``: checkpoints between formats, and what a checkpoint holds."""

from __future__ import annotations

import argparse
import json

from .base import add_activation, add_command, add_json, print_json

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
    from ..api import load

    clip = load(args.source, device="cpu", quick_gelu=args.quick_gelu, precision="fp32")
    written = clip.export_onnx(args.dest) if args.to == "onnx" else clip.save(args.dest, format=args.to)
    print(
        json.dumps({"source": args.source, "dest": str(written), "format": args.to})
        if args.json
        else f"wrote {args.to} {'encoders' if args.to == 'onnx' else 'checkpoint'} to {written}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..api import resolve_model_path
    from ..checkpoints import CheckpointError, build_model, read_checkpoint

    ckpt = read_checkpoint(resolve_model_path(args.checkpoint), quick_gelu=args.quick_gelu)
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
