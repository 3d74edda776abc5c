"""The ``cliplab`` command: one sub-command per job. Run ``cliplab COMMAND --help`` for details."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EXAMPLES = """examples:
  cliplab classify photo.jpg --labels "a cat,a dog,a bus" --model ViT-B-32/openai
  cliplab embed --images photos/*.jpg --out vectors.npy
  cliplab similarity --images a.jpg b.jpg --texts "a cat" "a dog" --plot matrix.png
  cliplab convert ViT-B-32.pt exported/ --to huggingface
  cliplab info exported/
"""


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 1."""


def _activation_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    act = parser.add_mutually_exclusive_group()
    act.add_argument("--gelu", dest="quick_gelu", action="store_false", default=None,
                     help="the checkpoint uses GELU (for bare state dicts that do not record it)")
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_true",
                     help="the checkpoint uses QuickGELU (OpenAI's weights)")


def _model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help="checkpoint path or name (default: cliplab-mini; e.g. ./ckpt, ViT-B-32/openai)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="compute in bf16 or fp32; auto (default): bf16 where the hardware has it natively")
    _activation_args(group)


def _load(args: argparse.Namespace):
    from .api import load

    return load(args.model, device=args.device, quick_gelu=args.quick_gelu, precision=args.precision)


def _split_labels(args: argparse.Namespace) -> list[str]:
    labels: list[str] = []
    if args.labels:
        labels += [s.strip() for s in args.labels.split(",") if s.strip()]
    if args.labels_file:
        labels += [s.strip() for s in Path(args.labels_file).read_text().splitlines() if s.strip()]
    return labels


def _check_files(paths: Sequence[str]) -> list[str]:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise CommandError(f"no such image file: {', '.join(missing[:5])}")
    return list(paths)


def cmd_classify(args: argparse.Namespace) -> int:
    from .zeroshot import ZeroShotClassifier

    images = _check_files(args.images)
    clip = _load(args)
    if args.classifier:
        classifier = ZeroShotClassifier.load(args.classifier)
    else:
        labels = _split_labels(args)
        if len(labels) < 2:
            raise CommandError("give two or more labels: --labels 'a cat,a dog' or --labels-file FILE")
        classifier = ZeroShotClassifier.from_labels(clip, labels, args.templates, progress=not args.json)
    if args.save_classifier:
        classifier.save(args.save_classifier)
    results = classifier.classify(clip, images, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": image, "predictions": [p.__dict__ for p in preds]}
                          for image, preds in zip(images, results)], indent=2))
    else:
        for image, preds in zip(images, results):
            print(image)
            for p in preds:
                print(f"  {p.probability:7.2%}  {p.label}")
    return 0


def _write_embeddings(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, vectors)
        path.with_suffix(".ids.txt").write_text("\n".join(i.replace("\n", " ") for i in ids) + "\n")
    else:  # .parquet (cmd_embed has checked the suffix)
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), vectors.shape[1])})
        pq.write_table(table, path)


def cmd_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix not in (".npy", ".parquet"):
        raise CommandError(f"--out must end in .npy or .parquet, got {out.name}")
    texts = list(args.texts or [])
    if args.texts_file:
        texts += [line for line in Path(args.texts_file).read_text().splitlines() if line.strip()]
    if bool(args.images) == bool(texts):
        raise CommandError("give either --images or --texts/--texts-file")
    clip = _load(args)
    if args.images:
        ids = _check_files(args.images)
        vectors = clip.embed_images(ids, batch_size=args.batch_size, progress=True)
    else:
        ids = texts
        vectors = clip.embed_texts(texts, progress=True)
    _write_embeddings(out, ids, vectors)
    print(json.dumps({"out": str(out), "count": len(ids), "dim": int(vectors.shape[1])}) if args.json
          else f"wrote {len(ids)} embeddings of dimension {vectors.shape[1]} to {out}")
    return 0


def cmd_similarity(args: argparse.Namespace) -> int:
    from .preprocess import load_image

    images = _check_files(args.images)
    if not args.texts:
        raise CommandError("give one or more --texts")
    clip = _load(args)
    pil_images = [load_image(p) for p in images]
    matrix = clip.embed_images(pil_images) @ clip.embed_texts(args.texts).T
    if args.plot:
        from .plotting import plot_similarity

        plot_similarity(matrix, pil_images, args.texts, args.plot)
    if args.json:
        print(json.dumps({"images": images, "texts": args.texts, "cosine": matrix.round(6).tolist()}, indent=2))
    else:
        width = max(len(t) for t in args.texts)
        print(" " * width + "  " + "  ".join(f"{Path(p).name[:10]:>10}" for p in images))
        for j, text in enumerate(args.texts):
            print(f"{text:>{width}}  " + "  ".join(f"{matrix[i, j]:10.4f}" for i in range(len(images))))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .api import load

    clip = load(args.source, device="cpu", quick_gelu=args.quick_gelu, precision="fp32")
    written = clip.export_onnx(args.dest) if args.to == "onnx" else clip.save(args.dest, format=args.to)
    print(json.dumps({"source": args.source, "dest": str(written), "format": args.to}) if args.json
          else f"wrote {args.to} {'encoders' if args.to == 'onnx' else 'checkpoint'} to {written}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import read_checkpoint, resolve

    ckpt = read_checkpoint(resolve(args.checkpoint), quick_gelu=args.quick_gelu)
    n_params = sum(v.numel() for k, v in ckpt.state_dict.items())
    info = {"path": args.checkpoint, "format": ckpt.source_format, "parameters": n_params,
            "config": ckpt.config.to_dict(), "preprocess": ckpt.preprocess, "notes": ckpt.notes}
    if args.json:
        print(json.dumps(info, indent=2, default=list))
        return 0
    cfg = ckpt.config
    tower = (f"ResNet {list(cfg.vision.layers)} width {cfg.vision.width}" if cfg.vision.is_resnet  # type: ignore[arg-type]
             else f"ViT {cfg.vision.layers} layers, width {cfg.vision.width}, patch {cfg.vision.patch_size}")
    print(f"{args.checkpoint}\n  format       {ckpt.source_format}\n  parameters   {n_params:,}\n"
          f"  image tower  {tower}, {cfg.vision.image_size} px\n"
          f"  text tower   {cfg.text.layers} layers, width {cfg.text.width}, context {cfg.text.context_length}\n"
          f"  embedding    {cfg.embed_dim}\n  activation   {'QuickGELU' if cfg.quick_gelu else 'GELU'}")
    for note in ckpt.notes:
        print(f"  note: {note}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.config import load_config
    from .train.loop import train

    overrides = list(args.set or [])
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    config = load_config(args.config, overrides)
    result = train(config, args.out, resume=args.resume, device=args.device, progress=not args.json)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the first process reports
        return 0
    summary = {"out": str(result.out_dir), "steps": result.steps, "seconds": round(result.seconds, 1),
               "samples_per_second": round(result.samples_per_second, 1), "final_loss": result.final_loss,
               "eval": result.eval}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.samples_per_second:.0f} samples/s), "
              f"final loss {result.final_loss:.3f}; model in {Path(args.out) / 'model'}")
        _print_eval(result.eval)
    return 0


def _print_eval(results: dict) -> None:
    if "zeroshot" in results:
        z = results["zeroshot"]
        print(f"zero-shot over {z['classes']} classes, {z['images']} images: top-1 {z['top1']:.1%} "
              f"(chance {z['chance_top1']:.2%}), top-5 {z['top5']:.1%} (chance {z['chance_top5']:.2%})")
    if "retrieval" in results:
        r = results["retrieval"]
        print(f"retrieval over {r['pairs']} pairs: " + ", ".join(
            f"{d} R@{k} {r[f'{d}_R@{k}']:.1%}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
            + f" (chance R@10 {r['chance_R@10']:.2%})")


def cmd_eval(args: argparse.Namespace) -> int:
    from .templates import get_templates
    from .train.evaluate import evaluate

    if not (args.zeroshot or args.retrieval):
        raise CommandError("give --zeroshot FILE and/or --retrieval FILE (JSONL with image and concept/caption)")
    results = evaluate(_load(args), args.zeroshot or "", args.retrieval or "", get_templates(args.templates))
    print(json.dumps(results, indent=2)) if args.json else _print_eval(results)
    return 0


def cmd_plot_run(args: argparse.Namespace) -> int:
    from .plotting import plot_run

    metrics = Path(args.run) / "metrics.jsonl" if Path(args.run).is_dir() else Path(args.run)
    if not metrics.is_file():
        raise CommandError(f"{metrics} does not exist: pass a run folder written by `cliplab train`")
    out = args.out or str(metrics.with_name("curves.png"))
    plot_run(metrics, out)
    print(out)
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    from .train.data import filter_captions, pack_shards, read_pairs

    pairs = read_pairs(args.source)
    if not args.no_filter:
        pairs, counts = filter_captions(pairs)
        print("caption filter removed: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing"))
    shards = pack_shards(pairs, Path(args.out), samples_per_shard=args.per_shard)
    print(f"wrote {len(pairs)} pairs into {len(shards)} shards in {args.out}")
    return 0


def cmd_data_sample_corpus(args: argparse.Namespace) -> int:
    from .train.corpus import build_sample_corpus

    summary = build_sample_corpus(Path(args.out), image_size=args.image_size, limit=args.limit)
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), device=args.device)


def build_parser() -> argparse.ArgumentParser:
    from .checkpoints import FORMATS
    from .templates import TEMPLATE_SETS

    parser = argparse.ArgumentParser(prog="cliplab", description="CLIP from training to serving.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("classify", help="zero-shot classify images against text labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", help="comma-separated class names or descriptions")
    p.add_argument("--labels-file", help="a file with one class name per line")
    p.add_argument("--templates", default="imagenet80",
                   help=f"prompt templates: {', '.join(TEMPLATE_SETS)} or your own, '|'-separated, with {{}} "
                        "for the label (default: imagenet80)")
    p.add_argument("-k", "--top-k", type=int, default=5)
    p.add_argument("--classifier", help="use class embeddings saved with --save-classifier instead of labels")
    p.add_argument("--save-classifier", help="save the class embeddings (safetensors) for reuse")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _model_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("embed", help="embed images or texts into .npy (+ .ids.txt) or .parquet")
    p.add_argument("--images", nargs="+", metavar="IMAGE")
    p.add_argument("--texts", nargs="+", metavar="TEXT")
    p.add_argument("--texts-file", help="a file with one text per line")
    p.add_argument("--out", required=True, help="output file, .npy or .parquet")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("similarity", help="the cosine-similarity matrix of images and texts")
    p.add_argument("--images", nargs="+", required=True, metavar="IMAGE")
    p.add_argument("--texts", nargs="+", required=True, metavar="TEXT")
    p.add_argument("--plot", help="save the matrix as a heatmap with thumbnails (PNG)")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_similarity)

    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("source", help="checkpoint path or name")
    p.add_argument("dest", help="output folder (a .pt file for --to openai)")
    p.add_argument("--to", choices=(*FORMATS, "onnx"), default="cliplab",
                   help="a checkpoint format, or onnx: image_encoder.onnx + text_encoder.onnx (needs cliplab[onnx])")
    p.add_argument("--json", action="store_true")
    _activation_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a checkpoint: format, architecture, parameters")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    _activation_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train or fine-tune CLIP from a TOML/YAML config (torchrun for many processes)")
    p.add_argument("config", help="training config (.toml or .yaml); see recipes/ for examples")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoints/, model/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="zero-shot accuracy and retrieval recall of a model on a data set")
    p.add_argument("--zeroshot", help="JSONL with image + concept (classes: concepts.json beside it, or all concepts)")
    p.add_argument("--retrieval", help="JSONL with image + caption")
    p.add_argument("--templates", default="{}|an emoji of {}.|a drawing of {}.|a picture of {}.")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot-run", help="loss, temperature and evaluation curves of a training run as a PNG")
    p.add_argument("run", help="run folder (or its metrics.jsonl)")
    p.add_argument("--out", help="PNG path (default: RUN/curves.png)")
    p.set_defaults(func=cmd_plot_run)

    p = sub.add_parser("data", help="data sets: pack shards, build the sample corpus")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser("pack", help="CSV/TSV/JSONL or a folder of images + .txt captions -> WebDataset shards")
    q.add_argument("source")
    q.add_argument("out")
    q.add_argument("--per-shard", type=int, default=1000)
    q.add_argument("--no-filter", action="store_true", help="keep empty, numeric and file-name-like captions")
    q.set_defaults(func=cmd_data_pack)
    q = data_sub.add_parser("sample-corpus", help="build the offline emoji + Openclipart corpus")
    q.add_argument("out")
    q.add_argument("--image-size", type=int, default=96)
    q.add_argument("--limit", type=int, default=None, help="items per source (for a quick look)")
    q.set_defaults(func=cmd_data_sample_corpus)

    p = sub.add_parser("demo", help="the main job on the built-in default model")
    p.add_argument("--out", default="out/demo", help="folder for the demo's pictures (default: out/demo)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import CheckpointError
    from .preprocess import ImageLoadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, CheckpointError, ImageLoadError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cliplab {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
