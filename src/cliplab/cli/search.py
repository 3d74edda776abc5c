"""``index``, ``search`` and ``serve``: a persistent, incremental store of embeddings and its search."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from pathlib import Path

from ..paths import DEFAULT_MODEL
from .base import CommandError, add_command, add_json, add_model, image_files, load_pipeline, print_json

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "index",
        cmd_index,
        "embed image folders and captions into a searchable store (incremental)",
        description="Embed every image under PATHs (recursive; JPEG, PNG, WebP, GIF, BMP, TIFF; hidden folders "
        "skipped) and the texts of --captions into STORE. Re-running embeds only new and changed files "
        "and removes deleted ones. Unreadable files are skipped and recorded. Interrupting keeps every "
        "committed batch: run the same command again to continue.",
        examples=[
            "cliplab index ~/Pictures --store photos.store",
            "cliplab index ~/Pictures --store photos.store --captions captions.csv",
            "cliplab index /mnt/photos --store photos.store --ray auto --model ViT-B-32/openai",
            "cliplab index /mnt/photos --store photos.store --compressed      # large-store layout now",
            "cliplab index ~/Pictures --store photos.store --milvus http://127.0.0.1:19530 --collection photos",
        ],
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image folders or files")
    p.add_argument("--store", required=True, help="store folder (created on first use)")
    p.add_argument(
        "--captions",
        help="texts to index too: CSV with columns id,text (a header row is optional) "
        'or JSONL of {"id", "text"}; the file is the whole set of texts',
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (one transaction each)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (default: a quarter of the cores, at most 8; 0, the default below 4 "
        "cores, decodes each batch in threads between the model's turns)",
    )
    p.add_argument("--wait", action="store_true", help="if another indexer holds the store, wait instead of failing")
    p.add_argument(
        "--exact-decode",
        action="store_true",
        help="decode JPEGs at full size (default: libjpeg's smallest reduced scale that still covers "
        "the model's input; about twice as fast for photos, embeddings within ~1e-5 in cosine)",
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="decode and embed on a Ray cluster: its address (HEAD:6379), 'auto' for the cluster this "
        "machine belongs to, or 'local' to start Ray here. A cluster with token authentication "
        "needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too",
    )
    p.add_argument(
        "--compressed",
        action="store_true",
        help="switch the store to the large-store layout now: vectors as codes in vectors/ and compressed "
        "on-disk indexes (OPQ + IVF + PQ, re-ranked); done by itself past 1,000,000 images or texts",
    )
    add_milvus(
        p,
        "also mirror the store into this Milvus server (http://HOST:19530): upsert what is new, "
        "delete what was removed",
    )
    add_json(p)
    add_model(p, default_hint=f"the store's model, else {DEFAULT_MODEL}")

    p = add_command(
        commands,
        "search",
        cmd_search,
        "search a store by text, by image or by a stored item",
        description="Nearest stored items to a text, an image or a stored item, in cosine similarity, "
        "with the model the store was built with.",
        examples=[
            'cliplab search photos.store "two dogs running in snow" -k 5',
            "cliplab search photos.store --image query.jpg --target text",
            'cliplab search photos.store "a red car" --target all --html sheet.html',
            "cliplab search photos.store --id 42 --json",
            "cliplab search photos.store --failures",
        ],
    )
    p.add_argument("store", help="store folder made by `cliplab index`")
    p.add_argument("query", nargs="?", help="a text query")
    p.add_argument("--image", help="search by an example image")
    p.add_argument("--id", type=int, help="search by a stored item's id")
    p.add_argument("--target", choices=("image", "text", "all"), default="image", help="what to find")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--html", help="also write a contact sheet with thumbnails and scores to this HTML file")
    p.add_argument("--failures", action="store_true", help="list the files the indexer skipped, with reasons")
    add_json(p)
    add_model(p, default_hint="the store's model")

    p = add_command(
        commands,
        "serve",
        cmd_serve,
        "HTTP search service and web page for a store (FastAPI + uvicorn)",
        examples=[
            "cliplab serve photos.store                      # http://127.0.0.1:8000/",
            "cliplab serve photos.store --host 0.0.0.0 --token $SECRET --port 9000",
            "cliplab serve --milvus http://127.0.0.1:19530 --collection photos",
        ],
    )
    p.add_argument("store", nargs="?", help="store folder made by `cliplab index` (or give --milvus)")
    add_milvus(p, "serve a Milvus collection filled by `cliplab index --milvus` instead of a store folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument(
        "--token",
        help="require this API token (header 'Authorization: Bearer TOKEN' or ?token=); default: $CLIPLAB_API_TOKEN",
    )
    p.add_argument("--no-token", action="store_true", help="allow serving beyond localhost without a token")
    add_model(p, default_hint="the store's model")


def add_milvus(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--milvus", metavar="URI", help=help + " (token: $MILVUS_TOKEN)")
    p.add_argument("--collection", default="cliplab", help="Milvus collection name (default: cliplab)")
    p.add_argument(
        "--milvus-index",
        default="HNSW",
        help="vector index Milvus builds for a new collection: HNSW (default), IVF_FLAT, IVF_PQ, DISKANN, FLAT",
    )


def milvus_collection(args: argparse.Namespace):
    from ..index.milvus import MilvusCollection

    collection = MilvusCollection.from_uri(args.milvus, args.collection)
    return MilvusCollection(collection.uri, collection.name, index_type=args.milvus_index)


def store_model(store: str) -> str | None:
    """The model a store records (its name or absolute path), or ``None`` if ``store`` is no store yet."""
    from ..index.store import read_store_model

    identity = read_store_model(store)
    return identity.name if identity else None


def cmd_index(args: argparse.Namespace) -> int:
    from ..index import index_paths

    if not args.paths and not args.captions:
        raise CommandError("nothing to index: give image folders/files and/or --captions FILE")
    pipeline = load_pipeline(args, model=None if args.model else store_model(args.store))
    try:
        if args.ray:
            from ..index.distributed import index_with_ray

            report = index_with_ray(
                pipeline,
                args.store,
                args.paths,
                address=args.ray,
                captions=args.captions,
                batch_size=args.batch_size,
                progress=not args.json,
                draft=not args.exact_decode,
                wait=args.wait,
                compressed=args.compressed,
            )
        else:
            report = index_paths(
                pipeline,
                args.store,
                args.paths,
                captions=args.captions,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=not args.json,
                wait=args.wait,
                draft=not args.exact_decode,
                compressed=args.compressed,
            )
        if args.milvus:
            from ..index.milvus import sync_to_milvus
            from ..index.store import Store

            with Store(args.store, writer=True, wait=True) as store:
                report.milvus = sync_to_milvus(store, milvus_collection(args), progress=not args.json)
    except KeyboardInterrupt:
        print(
            f"\ncliplab index: interrupted. {_kept(args.store)}; every batch committed before the interrupt "
            "is kept: run the same command again to continue.",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print_json(report.to_dict())
        return 0
    print(
        f"{report.store}: {report.total_images} images, {report.total_texts} texts "
        f"(embedded {report.embedded} images at {report.images_per_second:.1f}/s and {report.texts_embedded} "
        f"texts; {report.unchanged} unchanged, {report.touched} touched, {report.deleted} images and "
        f"{report.texts_deleted} texts removed) in {report.seconds:.1f} s"
    )
    if report.milvus:
        print(
            f"Milvus collection {report.milvus['collection']}: {report.milvus['upserted']} items upserted, "
            f"{report.milvus['deleted']} deleted"
        )
    if report.failed or report.known_failures:
        print(
            f"skipped {len(report.failed)} unreadable file(s) this run"
            + (f", {report.known_failures} known from earlier runs" if report.known_failures else "")
            + " (`cliplab search STORE --failures` lists them):"
        )
        for failure in report.failed[:20]:
            print(f"  {failure['path']}: {failure['reason']}")
    return 0


def _kept(store: str) -> str:
    from ..index.store import Store, StoreError

    try:
        with Store(store) as opened:
            return f"The store holds {opened.count('image')} images and {opened.count('text')} texts"
    except StoreError:
        return "The store was not created yet"


def cmd_search(args: argparse.Namespace) -> int:
    from ..index.search import Searcher
    from ..index.store import Store, read_store_model

    if args.failures:
        with Store(args.store) as store:
            failures = store.failures()
        if args.json:
            print_json(failures)
        else:
            print("\n".join(f"{f['path']}: {f['reason']}" for f in failures) or "no failures recorded")
        return 0
    if sum(x is not None for x in (args.query, args.image, args.id)) != 1:
        raise CommandError("give exactly one query: TEXT, --image FILE or --id N")
    if args.image is not None:
        image_files([args.image])
    recorded = read_store_model(args.store)
    if recorded is None:
        raise CommandError(f"{args.store} is not a cliplab store (no store.sqlite); create one with `cliplab index`")
    # A text query with the store's own model on the CPU needs no torch: a cached ONNX text encoder answers.
    fast = args.query is not None and args.model is None and args.device in (None, "cpu")
    fast = fast and args.precision in ("auto", "fp32")
    encoder = None
    if fast:
        from ..fast_queries import OnnxTextQueries

        encoder = OnnxTextQueries.open(recorded.fingerprint)
    pipeline = None
    if encoder is None:
        pipeline = encoder = load_pipeline(args, args.model or recorded.name, one_shot=True)
    with Searcher(encoder, args.store) as searcher:
        if args.query is not None:
            hits, title = searcher.text(args.query, args.k, args.target), args.query
        elif args.image is not None:
            hits, title = searcher.image(args.image, args.k, args.target), f"like {args.image}"
        else:
            hits, title = searcher.item(args.id, args.k, args.target), f"like item {args.id}"
    if fast and pipeline is not None:
        from ..fast_queries import save_text_queries

        if save_text_queries(pipeline) is not None and not args.json:
            print(
                "(saved this model's text encoder for torch-free queries: later text searches start faster)",
                file=sys.stderr,
            )
    if args.html:
        from ..index.contact_sheet import render_contact_sheet

        Path(args.html).write_text(render_contact_sheet(title, hits), encoding="utf-8")
    if args.json:
        print_json({"query": title, "target": args.target, "hits": [h.to_dict() for h in hits]})
        return 0
    for hit in hits:
        what = hit.item.path if hit.item.kind == "image" else f"{hit.item.text_id}: {hit.item.caption!r}"
        print(f"{hit.rank:>3}  {hit.score:6.3f}  {hit.item.kind:<5} {hit.item.id:>7}  {what}")
    if args.html:
        print(f"contact sheet: {args.html}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..extras import require

    require("fastapi", "serve", "cliplab serve")
    require("uvicorn", "serve", "cliplab serve")
    from ..serve import ServeSettings, run_server

    token = args.token or os.environ.get("CLIPLAB_API_TOKEN")
    if args.host not in LOCAL_HOSTS and not token and not args.no_token:
        raise CommandError(
            f"serving on {args.host} exposes the store to the network: set --token (or "
            "CLIPLAB_API_TOKEN) so clients must authenticate, or pass --no-token to allow anyone"
        )
    if (args.store is None) == (args.milvus is None):
        raise CommandError("give a store folder or --milvus URI (one of them)")
    if args.milvus:
        from ..index.milvus import MilvusStore

        target = milvus_collection(args)
        with contextlib.closing(MilvusStore(target)) as opened:
            model = args.model or opened.model.name
    else:
        target = args.store
        model = args.model or store_model(args.store)
        if model is None:
            raise CommandError(
                f"{args.store} is not a cliplab store (no store.sqlite); create one with `cliplab index`"
            )
    _check_port(args.host, args.port)
    run_server(load_pipeline(args, model), target, ServeSettings(host=args.host, port=args.port, token=token))
    return 0


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise CommandError(
                f"cannot listen on {host}:{port}: {error.strerror or error} (is another server "
                "running there? pick another --port)"
            ) from None
