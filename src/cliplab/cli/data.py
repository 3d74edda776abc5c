"""``cliplab data``: image-caption pairs into shards, from the web or from files, and the offline sample corpus.

The web path: ``extract`` (pages, WARC/WAT files, URL lists -> a Parquet table of URL + caption),
``download`` (the table -> WebDataset shards), ``filter`` (shards -> curated shards or a keep-list).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .base import HelpFormatter, Parser, add_command, add_json, add_model, load_pipeline, print_json


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "data",
        help="data sets: collect pairs from the web, pack and curate shards, build the sample corpus",
        description="Image-caption pairs: extract them from web pages, download them into WebDataset shards, "
        "curate the shards, pack local pairs into shards, build the offline sample corpus.",
        epilog="from web pages to a trained model:\n"
        "  cliplab data extract pages/ crawl.warc.gz pairs.parquet --languages en\n"
        "  cliplab data download pairs.parquet shards/\n"
        "  cliplab data filter shards/ curated/ --model ViT-B-32/openai --min-clip-score 0.28\n"
        "  cliplab train recipe.toml --out run --set data.train='[[\"/abs/path/curated\", 1.0]]'",
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

    register_web(sub)


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


# =========================================================================== the web path


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_caption_filter(parser: argparse.ArgumentParser, default_rules: str) -> None:
    from ..data.captions import WEB_CAPTION_RULES, describe_rules

    group = parser.add_argument_group(
        "caption rules",
        "rules: " + "; ".join(f"{name}: {text}" for name, text in describe_rules().items()),
    )
    group.add_argument(
        "--caption-rules",
        default=default_rules,
        metavar="RULES",
        help=f"comma-separated rules to apply, or 'none' (all: {','.join(WEB_CAPTION_RULES)}; default: %(default)s)",
    )
    group.add_argument("--languages", default="", help="keep only captions in these ISO 639-1 languages, e.g. en,de")
    group.add_argument("--min-words", type=int, default=2, help="too_short: fewer words")
    group.add_argument("--min-chars", type=int, default=5, help="too_short: fewer characters")
    group.add_argument("--max-words", type=int, default=200, help="too_long: more words")
    group.add_argument("--max-chars", type=int, default=1000, help="too_long: more characters")
    group.add_argument("--max-repeats", type=int, default=10, help="repeated: one alt text on more images than this")


def _caption_filter(args: argparse.Namespace):
    from ..data.captions import WEB_CAPTION_RULES, CaptionFilter

    rules = [] if args.caption_rules.strip().lower() == "none" else _csv_list(args.caption_rules)
    if rules == ["all"]:
        rules = list(WEB_CAPTION_RULES)
    return CaptionFilter(
        rules=rules,
        min_words=args.min_words,
        min_chars=args.min_chars,
        max_words=args.max_words,
        max_chars=args.max_chars,
        languages=_csv_list(args.languages),
        max_repeats=args.max_repeats,
    )


def _add_ray(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help=f"{what} on a Ray cluster: an address (head:6379), 'auto', or 'local' to start one here; "
        "OUT must be on storage every node shares. A cluster with token authentication needs "
        "RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too",
    )
    parser.add_argument("--ray-tasks", type=int, default=0, help="Ray tasks (default: one per CPU of the cluster)")


def register_web(sub: argparse._SubParsersAction) -> None:
    from ..data.web.status import FAILURE_CLASSES

    p = add_command(
        sub,
        "extract",
        cmd_extract,
        "image URLs and their captions from HTML pages, WARC/WAT files and URL lists -> a Parquet table",
        description="Find images and their captions: <img> src/srcset/lazy-loading attributes with alt, "
        "title and <figcaption> (optionally nearby text) in saved HTML pages and folders of them, Common "
        "Crawl's WARC and WAT files (gzip or not), and URL lists (CSV/TSV/JSONL/Parquet with url and caption "
        "columns). Relative URLs are resolved against the page and its <base>; data:/javascript: URLs, "
        "tracking pixels and icons are skipped; pages that opt out (robots meta tag or X-Robots-Tag noai, "
        "noimageai, ...) are skipped; duplicate (URL, caption) pairs are dropped. Each row keeps the URL, "
        "caption, caption source, page URL and detected language; the caption rules then apply.",
        examples=[
            "cliplab data extract saved_pages/ pairs.parquet",
            "cliplab data extract CC-MAIN-*.warc.wat.gz pairs.parquet --languages en",
            "cliplab data extract site.warc.gz --nearby-text pairs.parquet --json",
        ],
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="HTML files or folders, .warc/.wat(.gz) files, URL lists")
    p.add_argument(
        "out", metavar="OUT.parquet", help="the table to write (url, caption, caption_source, page_url, language)"
    )
    p.add_argument(
        "--nearby-text", action="store_true", help="for images without alt/title/figcaption, use the text around them"
    )
    p.add_argument("--base-url", default="", help="the page URL of saved HTML files that do not record one")
    p.add_argument(
        "--keep-opted-out", action="store_true", help="keep images of pages whose meta tags opt out (not polite)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _add_caption_filter(p, "all")
    _add_ray(p, "extract")
    add_json(p)

    p = add_command(
        sub,
        "download",
        cmd_download,
        "a URL list -> WebDataset shards that `cliplab train` reads (crash-safe, resumable, polite)",
        description="Download the images of a URL list (CSV/TSV/JSONL/Parquet with url and caption columns; "
        "other columns go into the metadata) into OUT/shard-NNNNNN.tar (KEY.jpg, KEY.txt, KEY.json), with "
        "a Parquet file (one row per URL: status, failure class, sizes, SHA-256) and a stats file per "
        "shard. Asynchronous HTTP with a DNS cache, global and per-host connection limits and timeouts; "
        "robots.txt, X-Robots-Tag and robots meta opt-outs honoured; 429/503 Retry-After honoured; only "
        "transient failures (timeout, reset, 5xx, 429) retried, with backoff. A kill at any moment loses "
        "nothing written: run the same command again to continue.",
        examples=[
            "cliplab data download pairs.parquet shards/",
            "cliplab data download laion.parquet shards/ --url-column URL --caption-column TEXT --per-host 8",
            "cliplab data download pairs.parquet shards/ --retry-failed timeout,5xx",
            "cliplab data download pairs.parquet /shared/shards --ray auto",
        ],
    )
    p.epilog = (
        (p.epilog or "")
        + "\n\nfailure classes (the status column):\n"
        + "\n".join(f"  {name:<19} {meaning}" for name, meaning in FAILURE_CLASSES.items())
    )
    p.add_argument("url_list", help="CSV/TSV/JSONL/Parquet table with a URL and a caption column")
    p.add_argument("out", help="output folder (shards, metadata, stats); an earlier run there is resumed")
    p.add_argument("--url-column", default=None, help="the URL column (default: url, image_url, ... any case)")
    p.add_argument("--caption-column", default=None, help="the caption column (default: caption, text, alt, ...)")
    p.add_argument("--shard-size", type=int, default=10_000, help="URLs per shard")
    p.add_argument(
        "--retry-failed",
        default="",
        metavar="CLASSES",
        help="request again the URLs that failed with these classes, e.g. timeout,5xx ('transient': "
        "timeout,reset,5xx,429); permanent failures are never retried",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an earlier download in OUT and start again")
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=int, default=256, help="target side in pixels")
    g.add_argument(
        "--resize-mode",
        choices=("keep_ratio", "keep_ratio_largest", "center_crop", "border", "no"),
        default="keep_ratio",
        help="keep_ratio: smaller side = image size; keep_ratio_largest: larger side; center_crop: a "
        "square; border: padded to a white square; no: the original bytes",
    )
    g.add_argument("--resize-only-if-bigger", action="store_true", help="never enlarge small images")
    g.add_argument("--encode-format", choices=("jpg", "png", "webp"), default="jpg", help="format of the stored images")
    g.add_argument("--encode-quality", type=int, default=95, help="JPEG/WebP quality")
    g.add_argument("--max-pixels", type=int, default=89_478_485, help="refuse images declaring more pixels (bombs)")
    g.add_argument("--threads", type=int, default=0, help="image decoding threads (default: one per core)")
    g = p.add_argument_group("network")
    g.add_argument("--concurrency", type=int, default=256, help="connections open at once, in all")
    g.add_argument("--per-host", type=int, default=16, help="connections open at once to one host")
    g.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to connect")
    g.add_argument("--read-timeout", type=float, default=10.0, help="longest silence while reading, in seconds")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds for a whole request")
    g.add_argument("--max-redirects", type=int, default=5, help="redirects followed (across hosts too)")
    g.add_argument("--max-megabytes", type=float, default=16.0, help="size cap of one response body (decoded)")
    g.add_argument("--retries", type=int, default=2, help="retries of a transient failure")
    g.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles, with jitter)")
    g.add_argument("--max-retry-after", type=float, default=60.0, help="longest Retry-After waited for, in seconds")
    g.add_argument(
        "--user-agent", default=None, help="the User-Agent header (default names cliplab and how to opt out)"
    )
    g.add_argument(
        "--opt-out-directives",
        default="noai,noimageai,noindex,noimageindex",
        help="X-Robots-Tag / robots meta directives that exclude an image",
    )
    g.add_argument(
        "--ignore-robots-txt", action="store_true", help="do not read robots.txt (impolite: only for your own sites)"
    )
    _add_ray(p, "download")
    add_json(p)

    p = add_command(
        sub,
        "filter",
        cmd_filter,
        "curate shards: CLIP score, image size and aspect ratio, caption rules, exact and near duplicates",
        description="Keep the pairs of SHARDS that pass every rule, and count what each rule removed: the "
        "caption rules; image size and aspect ratio; exact duplicates (SHA-256 of the image bytes); near "
        "duplicates (image embeddings closer than a cosine threshold, found with FAISS); the CLIP score "
        "(cosine of image and caption embeddings) over a threshold (LAION kept >= 0.28 with ViT-B/32) or "
        "the best fraction (DataComp's best baseline keeps 30%%). Writes new shards into OUT, or with "
        "--keep-list a list of kept samples that training reads (data.keep = OUT).",
        examples=[
            "cliplab data filter shards/ curated/ --model ViT-B-32/openai --min-clip-score 0.28",
            "cliplab data filter shards/ curated/ --top-fraction 0.3 --near-duplicates 0.95",
            "cliplab data filter shards/ keep.txt --keep-list --min-size 128 --max-aspect-ratio 3",
        ],
    )
    p.add_argument("shards", help="shard folder, pattern (data/{000000..000009}.tar) or .tar file")
    p.add_argument("out", help="folder for the curated shards (or the keep-list file with --keep-list)")
    p.add_argument("--keep-list", action="store_true", help="write a list of kept samples instead of new shards")
    p.add_argument("--min-clip-score", type=float, default=None, help="keep pairs whose CLIP score is at least this")
    p.add_argument(
        "--top-fraction", type=float, default=None, help="keep this fraction of pairs with the best CLIP scores"
    )
    p.add_argument("--min-size", type=int, default=0, help="smallest original side, in pixels (0: no limit)")
    p.add_argument(
        "--max-aspect-ratio", type=float, default=0.0, help="longest / shortest side at most this (0: no limit)"
    )
    p.add_argument("--no-exact-duplicates", action="store_true", help="keep byte-identical images")
    p.add_argument(
        "--near-duplicates",
        type=float,
        default=None,
        metavar="COSINE",
        help="remove images whose embedding is at least this similar to a kept one's (e.g. 0.95; needs a model)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    p.add_argument("--per-shard", type=int, default=10_000, help="samples per curated shard")
    p.add_argument("--overwrite", action="store_true", help="replace OUT")
    _add_caption_filter(p, "none")
    add_model(p)
    add_json(p)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..data.web.extract import ExtractSettings, extract, extract_summary

    settings = ExtractSettings(
        nearby_text=args.nearby_text,
        base_url=args.base_url,
        honour_opt_outs=not args.keep_opted_out,
        caption_filter=_caption_filter(args),
    )
    if args.ray:
        from ..data.web.distributed import extract_with_ray

        report = extract_with_ray(
            args.inputs, args.out, settings, address=args.ray, tasks=args.ray_tasks, overwrite=args.overwrite
        )
    else:
        report = extract(args.inputs, args.out, settings, overwrite=args.overwrite, progress=not args.json)
    if args.json:
        print_json(report.to_dict())
    else:
        print(extract_summary(report))
    return 0


def _download_settings(args: argparse.Namespace):
    from ..data.web.download import DownloadSettings
    from ..data.web.fetch import USER_AGENT, FetchSettings
    from ..data.web.resize import ResizeSettings

    fetch = FetchSettings(
        concurrency=args.concurrency,
        per_host=args.per_host,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        total_timeout=args.timeout,
        max_redirects=args.max_redirects,
        max_bytes=int(args.max_megabytes * 1024 * 1024),
        retries=args.retries,
        backoff=args.backoff,
        max_retry_after=args.max_retry_after,
        robots_txt=not args.ignore_robots_txt,
        opt_out_directives=frozenset(d.lower() for d in _csv_list(args.opt_out_directives)),
        user_agent=args.user_agent or USER_AGENT,
    )
    resize = ResizeSettings(
        image_size=args.image_size,
        mode=args.resize_mode,
        only_if_bigger=args.resize_only_if_bigger,
        encode_format=args.encode_format,
        quality=args.encode_quality,
        max_pixels=args.max_pixels,
    )
    return DownloadSettings(
        fetch=fetch,
        resize=resize,
        shard_size=args.shard_size,
        threads=args.threads,
        url_column=args.url_column,
        caption_column=args.caption_column,
    )


def cmd_download(args: argparse.Namespace) -> int:
    from ..data.web.download import download, summary_table

    settings = _download_settings(args)
    retry = _csv_list(args.retry_failed)
    if args.ray:
        from ..data.web.distributed import download_with_ray

        report = download_with_ray(
            args.url_list,
            args.out,
            settings,
            address=args.ray,
            tasks=args.ray_tasks,
            retry_failed=retry,
            overwrite=args.overwrite,
        )
    else:
        report = download(
            args.url_list, args.out, settings, retry_failed=retry, overwrite=args.overwrite, progress=not args.json
        )
    if args.json:
        print_json(report.to_dict())
    else:
        print(summary_table(report))
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from ..data.web.curate import CurateSettings, curate, curate_summary

    settings = CurateSettings(
        min_clip_score=args.min_clip_score,
        top_fraction=args.top_fraction,
        min_size=args.min_size,
        max_aspect_ratio=args.max_aspect_ratio,
        exact_duplicates=not args.no_exact_duplicates,
        near_duplicates=args.near_duplicates,
        caption_filter=_caption_filter(args) if args.caption_rules.strip().lower() != "none" else None,
        batch_size=args.batch_size,
        per_shard=args.per_shard,
    )
    pipeline = None
    if settings.needs_model:
        pipeline = load_pipeline(args)
    report = curate(
        args.shards,
        args.out,
        settings,
        pipeline=pipeline,
        keep_list=args.keep_list,
        overwrite=args.overwrite,
        progress=not args.json,
    )
    if args.json:
        print_json(report.to_dict())
    else:
        print(curate_summary(report))
    return 0
