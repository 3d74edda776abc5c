"""``cliplab data``: image-caption pairs into shards, and the offline sample corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import HelpFormatter, Parser, add_command, add_json, print_json


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "data",
        help="data sets: pack shards, build the sample corpus and install its art",
        description="Image-caption pairs: pack them into WebDataset shards, build the offline sample corpus.",
        formatter_class=HelpFormatter,
    )
    sub = group.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND", parser_class=Parser)

    p = add_command(
        sub,
        "pack",
        cmd_pack,
        "CSV/TSV/JSONL or a folder of images + .txt captions -> WebDataset shards",
        examples=["cliplab data pack pairs.csv shards/ --per-shard 1000"],
    )
    p.add_argument("source", help="a table (image and caption columns) or a folder of images with .txt captions")
    p.add_argument("out", help="folder for shard-000000.tar, ...")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    p.add_argument("--no-filter", action="store_true", help="keep empty, numeric and file-name-like captions")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in OUT")
    add_json(p)

    p = add_command(
        sub,
        "sample-corpus",
        cmd_sample_corpus,
        "build the offline emoji + Openclipart corpus",
        examples=["cliplab data sample-corpus corpus/", "cliplab data sample-corpus small/ --limit 50"],
    )
    p.add_argument("out", help="corpus folder (images/, pairs.jsonl, splits, LICENSES.md)")
    p.add_argument("--image-size", type=int, default=96, help="side of the rendered PNGs in pixels")
    p.add_argument("--limit", type=int, default=None, help="items per source, for a quick look (default: all)")
    p.add_argument("--install", action="store_true", help="install missing art first (see `cliplab data sources`)")
    add_json(p)

    p = add_command(
        sub,
        "sources",
        cmd_sources,
        "show, or install, the art the sample corpus is rendered from",
        description="The sample corpus is rendered from Debian packages (openclipart-svg, "
        "fonts-noto-color-emoji, unicode-cldr-core, librsvg2-bin; installed with apt-get, "
        "which needs root or sudo) and npm tarballs of Iconify emoji sets (fetched with "
        "`npm pack` into $CLIPLAB_SOURCES or $CLIPLAB_HOME/sources).",
        examples=["cliplab data sources", "cliplab data sources --install"],
    )
    p.add_argument("--install", action="store_true", help="install what is missing")
    add_json(p)


def cmd_pack(args: argparse.Namespace) -> int:
    from ..data import filter_captions, pack_shards, read_pairs

    pairs = read_pairs(args.source)
    counts: dict[str, int] = {}
    if not args.no_filter:
        pairs, counts = filter_captions(pairs)
    shards = pack_shards(
        pairs, Path(args.out), samples_per_shard=args.per_shard, progress=not args.json, overwrite=args.overwrite
    )
    if args.json:
        print_json({"pairs": len(pairs), "shards": [str(s) for s in shards], "caption_filter_removed": counts})
        return 0
    if not args.no_filter:
        print("caption filter removed: " + (", ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing"))
    print(f"wrote {len(pairs)} pairs into {len(shards)} shards in {args.out}")
    return 0


def cmd_sample_corpus(args: argparse.Namespace) -> int:
    from ..data.corpus import build_sample_corpus

    if args.install:
        from ..data.corpus.install import install_sources

        install_sources()
    summary = build_sample_corpus(Path(args.out), image_size=args.image_size, limit=args.limit, progress=not args.json)
    if args.json:
        print_json(summary.to_dict())
    else:
        print(
            f"{summary.out}: {summary.items} pairs ({', '.join(f'{k} {v}' for k, v in summary.splits.items())}), "
            f"{summary.concepts} zero-shot classes; {'already built' if summary.cached else f'built in {summary.build_seconds:.0f} s'}"
            f"; licences in {summary.out / 'LICENSES.md'}"
        )
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from ..data.corpus.install import install_sources
    from ..data.corpus.sources import missing_sources
    from ..paths import sources_dir

    if args.install:
        install_sources(log=print if not args.json else lambda message: None)
    missing = missing_sources()
    if args.json:
        print_json({"sources_dir": str(sources_dir()), "missing": missing})
    elif missing:
        print("missing:\n" + "\n".join(f"  {m}" for m in missing) + "\ninstall with: cliplab data sources --install")
    else:
        print(f"all sample-corpus sources are installed (npm tarballs in {sources_dir()})")
    return 1 if missing and args.install else 0
