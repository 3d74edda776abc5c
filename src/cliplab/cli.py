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
  cliplab index ~/Pictures --store photos.store && cliplab search photos.store "a red car" -k 5
  cliplab serve photos.store                      # http://127.0.0.1:8000/
  cliplab detect scene.png "a fluffy cat" --out overlay.png
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


def _embed_readable(clip, paths: list[str], batch_size: int = 32, progress: bool = False
                    ) -> tuple[list[str], np.ndarray, list[dict]]:
    """Embed the image files that can be read; skip the others with the reason (printed to stderr).
    Returns ``(embedded paths, vectors, skipped)``. Raises :class:`CommandError` if none could be read."""
    from tqdm.auto import tqdm

    from .preprocess import ImageLoadError

    kept, chunks, skipped = [], [], []
    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="embedding images")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        try:
            chunks.append(clip.embed_images(chunk, batch_size=batch_size))
            kept += chunk
        except (ImageLoadError, OSError):  # find the culprits one by one
            for path in chunk:
                try:
                    chunks.append(clip.embed_images([path]))
                    kept.append(path)
                except (ImageLoadError, OSError) as error:
                    skipped.append({"image": path, "reason": str(error)})
                    print(f"skipped {path}: {error}", file=sys.stderr)
        bar.update(len(chunk))
    bar.close()
    if not kept:
        raise CommandError(f"none of the {len(paths)} image(s) could be read" + (
            f": {skipped[0]['reason']}" if len(skipped) == 1 else " (reasons above)"))
    return kept, np.concatenate(chunks), skipped


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
    images, vectors, skipped = _embed_readable(clip, images, progress=not args.json and len(images) > 32)
    results = classifier.predict(vectors, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"image": image, "predictions": [p.__dict__ for p in preds]}
                          for image, preds in zip(images, results)] + [{**s, "predictions": []} for s in skipped],
                         indent=2))
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
        ids, vectors, _ = _embed_readable(clip, _check_files(args.images), args.batch_size, progress=True)
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
    from .checkpoints import CheckpointError, build_model, read_checkpoint, resolve

    ckpt = read_checkpoint(resolve(args.checkpoint), quick_gelu=args.quick_gelu)
    try:
        build_model(ckpt)  # the weights must fit the architecture the files describe
    except CheckpointError as error:
        raise CheckpointError(f"{args.checkpoint}: {error}") from None
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


def cmd_index(args: argparse.Namespace) -> int:
    from .index import index_paths

    if not args.paths and not args.captions:
        raise CommandError("nothing to index: give image folders/files and/or --captions FILE")
    pipeline = _load(args)
    if args.ray:
        from .index.distributed import index_with_ray

        report = index_with_ray(pipeline, args.store, args.paths, address=args.ray, captions=args.captions,
                                batch_size=args.batch_size, progress=not args.json, draft=not args.exact_decode,
                                wait=args.wait)
    else:
        report = index_paths(pipeline, args.store, args.paths, captions=args.captions, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.json, wait=args.wait,
                             draft=not args.exact_decode)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.store}: {report.total_images} images, {report.total_texts} texts "
          f"(embedded {report.embedded} images at {report.images_per_second:.1f}/s and {report.texts_embedded} texts; "
          f"{report.unchanged} unchanged, {report.touched} touched, {report.deleted} removed) in {report.seconds:.1f} s")
    if report.failed or report.known_failures:
        print(f"skipped {len(report.failed)} unreadable file(s) this run"
              + (f", {report.known_failures} known from earlier runs" if report.known_failures else "")
              + " (`cliplab search STORE --failures` lists them):")
        for failure in report.failed[:20]:
            print(f"  {failure['path']}: {failure['reason']}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .index import Searcher

    given = sum(x is not None for x in (args.query, args.image, args.id))
    if args.failures:
        from .index import Store

        with Store(args.store) as store:
            failures = store.failures()
        print(json.dumps(failures, indent=2) if args.json else
              "\n".join(f"{f['path']}: {f['reason']}" for f in failures) or "no failures recorded")
        return 0
    if given != 1:
        raise CommandError("give exactly one query: TEXT, --image FILE or --id N")
    if args.image is not None:
        _check_files([args.image])
    with Searcher(_load(args), args.store) as searcher:
        if args.query is not None:
            hits, title = searcher.text(args.query, args.k, args.target), args.query
        elif args.image is not None:
            hits, title = searcher.image(args.image, args.k, args.target), f"like {args.image}"
        else:
            hits, title = searcher.item(args.id, args.k, args.target), f"like item {args.id}"
    if args.html:
        from .index.contact_sheet import render_contact_sheet

        Path(args.html).write_text(render_contact_sheet(title, hits), encoding="utf-8")
    if args.json:
        print(json.dumps({"query": title, "target": args.target, "hits": [h.to_dict() for h in hits]}, indent=2))
        return 0
    for hit in hits:
        what = hit.item.path if hit.item.kind == "image" else repr(hit.item.caption)
        print(f"{hit.rank:>3}  {hit.score:6.3f}  {hit.item.kind:<5} {hit.item.id:>7}  {what}")
    if args.html:
        print(f"contact sheet: {args.html}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeSettings, run_server

    token = args.token or os.environ.get("CLIPLAB_API_TOKEN")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token and not args.no_token:
        raise CommandError(f"serving on {args.host} exposes the store to the network: set --token (or "
                           "CLIPLAB_API_TOKEN) so clients must authenticate, or pass --no-token to allow anyone")
    run_server(_load(args), args.store, ServeSettings(host=args.host, port=args.port, token=token))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), device=args.device)


# ---- detection, guided generation and relevance maps (cliplab.detect, cliplab.generate)


def _detect_options(args: argparse.Namespace) -> dict:
    scales = tuple(float(v) for v in args.scales.split(","))
    if not scales or any(not 0 < v <= 1 for v in scales):
        raise CommandError(f"--scales must be fractions in (0, 1], got {args.scales}")
    return {"scales": scales, "overlap": args.overlap, "background": args.background, "progress": not args.json}


def cmd_detect(args: argparse.Namespace) -> int:
    from .detect import detect, draw_overlay

    image = _check_files([args.image])[0]
    result = detect(_load(args), image, args.queries, threshold=args.threshold, max_boxes=args.max_boxes,
                    **_detect_options(args))
    if args.out:
        draw_overlay(image, result, args.out)
    if args.json:
        print(json.dumps({"image": image, "boxes": [d.to_dict() for d in result.boxes], "overlay": args.out},
                         indent=2))
    else:
        for d in result.boxes:
            print(f"{d.score:6.3f}  {d.label}  [{', '.join(map(str, d.box))}]")
        if not result.boxes:
            print(f"no box scored {args.threshold} or more (try a lower --threshold)")
        if args.out:
            print(f"overlay written to {args.out}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .detect import relevance_map, save_relevance

    image = _check_files([args.image])[0]
    heatmap = relevance_map(_load(args), image, args.text, **_detect_options(args))
    save_relevance(image, heatmap, args.text, args.out)
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    summary = {"image": image, "text": args.text, "out": args.out, "peak": [int(x), int(y)],
               "max": round(float(heatmap.max()), 6), "min": round(float(heatmap.min()), 6)}
    print(json.dumps(summary, indent=2) if args.json else
          f"relevance of {args.text!r}: peak at x={x}, y={y} ({heatmap.max():.3f}); map written to {args.out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    if args.init:
        _check_files([args.init])
    result = generate(_load(args), args.prompt, steps=args.steps, seed=args.seed, size=args.size,
                      cutouts_per_step=args.cutouts, lr=args.lr, init=args.init, progress=not args.json)
    paths = result.save(args.out)
    summary = {**paths, "prompt": args.prompt, "seed": args.seed, "steps": args.steps,
               "start_similarity": round(result.similarities[0], 6),
               "final_similarity": round(result.final_similarity, 6)}
    print(json.dumps(summary, indent=2) if args.json else
          f"cosine to {args.prompt!r}: {result.similarities[0]:.3f} -> {result.final_similarity:.3f}\n"
          f"image {paths['image']}, intermediates {paths['strip']}, curve {paths['curve']}")
    return 0


def _add_vision_parsers(sub) -> None:
    from .detect import BACKGROUND_PROMPTS, WINDOW_SCALES

    def window_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scales", default=",".join(map(str, WINDOW_SCALES)),
                       help="window sides as fractions of the image's shorter side, comma-separated")
        p.add_argument("--overlap", type=float, default=0.75, help="overlap of neighbouring windows (default 0.75)")
        p.add_argument("--background", nargs="+", default=list(BACKGROUND_PROMPTS), metavar="TEXT",
                       help="neutral prompts the queries are contrasted with")
        p.add_argument("--json", action="store_true")
        _model_args(p)

    p = sub.add_parser("detect", help="find where texts are in an image: sliding-window boxes and heatmaps")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="what to look for, e.g. 'a fluffy cat'")
    p.add_argument("--out", help="save the heatmap overlay with boxes and labels (PNG)")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum box score, a probability (default 0.5)")
    p.add_argument("--max-boxes", type=int, default=3, help="boxes per query at most (default 3)")
    window_args(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("explain", help="a relevance map: where in an image the model sees a text")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--out", required=True, help="PNG: the image beside its relevance map")
    window_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("generate", help="generate an image by steering it towards a text until CLIP agrees")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--out", required=True, help="the image (PNG); *_strip.png and *_curve.png are written beside it")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="side in pixels (default: twice the model's input)")
    p.add_argument("--cutouts", type=int, default=16, help="random crops per step (default 16)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--init", help="start from this image instead of noise")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_generate)


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

    p = sub.add_parser("index", help="embed image folders and captions into a searchable store (incremental)",
                       description="Embed every image under PATHs (recursive; JPEG, PNG, WebP, GIF, BMP, TIFF) and "
                                   "the texts of --captions into STORE. Re-running embeds only new and changed "
                                   "files and removes deleted ones. Unreadable files are skipped and recorded.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image folders or files")
    p.add_argument("--store", required=True, help="store folder (created on first use)")
    p.add_argument("--captions", help="CSV (id,text) or JSONL ({'id', 'text'}) of texts to index too")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: a quarter of the cores, at most 8; 0 decodes each batch in "
                        "threads of the main process between the model's turns, the default below 4 cores)")
    p.add_argument("--wait", action="store_true", help="if another indexer holds the store, wait instead of failing")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode JPEGs at full size (default: libjpeg's smallest reduced scale that still covers "
                        "the model's input; about twice as fast for photos, embeddings within ~1e-5 in cosine)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="decode and embed on a Ray cluster: its address (HEAD:6379), 'auto' for the cluster this "
                        "machine belongs to, or 'local' to start Ray here. A cluster with token authentication "
                        "needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a store by text, by image or by a stored item",
                       description="Nearest stored items to a text, an image or a stored item, in cosine similarity.")
    p.add_argument("store", help="store folder made by `cliplab index`")
    p.add_argument("query", nargs="?", help="a text query")
    p.add_argument("--image", help="search by an example image")
    p.add_argument("--id", type=int, help="search by a stored item's id")
    p.add_argument("--target", choices=("image", "text", "all"), default="image",
                   help="what to find: images (default), texts, or both")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--html", help="also write a contact sheet with thumbnails and scores to this HTML file")
    p.add_argument("--failures", action="store_true", help="list the files the indexer skipped, with reasons")
    p.add_argument("--json", action="store_true")
    _model_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="HTTP search service and web page for a store (FastAPI + uvicorn)")
    p.add_argument("store", help="store folder made by `cliplab index`")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require this API token (header 'Authorization: Bearer TOKEN' or ?token=)")
    p.add_argument("--no-token", action="store_true", help="allow serving beyond localhost without a token")
    _model_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the main job on the built-in default model")
    p.add_argument("--out", default="out/demo", help="folder for the demo's pictures (default: out/demo)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    _add_vision_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoints import CheckpointError
    from .index.store import StoreError
    from .preprocess import ImageLoadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CommandError, CheckpointError, ImageLoadError, StoreError, ValueError, FileNotFoundError,
            KeyError, ConnectionError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cliplab {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
