"""Download speed: ``cliplab data download`` against img2dataset, side by side, on the same loopback site.

Both tools get the same URL list (``--urls`` rows: JPEG photos of 500-2,000 px with a realistic size
mix, plus ``--failure-rate`` failures: 404, 403, 500, HTML served as .jpg, a host that refuses
connections), the same server (a separate process on 127.0.1.x addresses with ``--latency`` seconds
added to every response), the same resize (256 px, keep ratio, JPEG quality 95), the same output
(WebDataset tars) and the same cores (``taskset`` to the first ``--cores`` CPUs). It prints images/s,
the success rate on the good URLs, the requests each tool sent (and how many went to permanent
failures), CPU seconds per image, the peak memory of each tool's process tree, and the ratios.
Goal: >= 2x img2dataset's images/s at equal cores, the same success on the good URLs, no extra
requests on permanent failures.

The photos are generated once (seeded) and cached in ``--cache`` (about 210 KB each: 20,000 take
~4.2 GB; delete the folder to reclaim it).

    python benchmarks/bench_download.py                      # 20,000 URLs, 2 cores (the full run)
    nice -n 19 python benchmarks/bench_download.py --urls 2000   # a smoke run
    python benchmarks/bench_download.py --only cliplab --urls 5000

img2dataset comes from PyPI (``pip install 'cliplab[bench]'``); it needs NO_ALBUMENTATIONS_UPDATE=1,
which this script sets.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from web_site import Resource, WebSite, photo_jpeg  # noqa: E402  (the test suite's loopback site)

# seeded photos, generated once (about 4 GB for 20,000 URLs); $CLIPLAB_BENCH_CACHE overrides
DEFAULT_CACHE = Path(os.environ.get("CLIPLAB_BENCH_CACHE", Path.home() / ".cache" / "cliplab-bench")) / "photos"
# Longest side: log-uniform over 500-2,000 px (median ~1,000); aspect ratios as photos on the web.
ASPECTS = [(4 / 3, 0.35), (3 / 2, 0.25), (16 / 9, 0.1), (1.0, 0.1), (3 / 4, 0.12), (2 / 3, 0.08)]
FAILURES = [("missing", 0.4), ("forbidden", 0.2), ("error", 0.1), ("page", 0.2), ("refused", 0.1)]
PERMANENT = ("missing", "forbidden", "page", "refused")
OPT_OUTS = ["noai", "noimageai", "noindex", "noimageindex"]


# --------------------------------------------------------------------------- the photos


def photo_size(rng: random.Random) -> tuple[int, int]:
    longest = int(math.exp(rng.uniform(math.log(500), math.log(2000))))
    ratio = rng.choices([a for a, _ in ASPECTS], [w for _, w in ASPECTS])[0]
    if ratio >= 1:
        return longest, max(1, round(longest / ratio))
    return max(1, round(longest * ratio)), longest


def _make_photo(job: tuple[Path, int, int, int, int]) -> None:
    path, index, width, height, seed = job
    data = photo_jpeg(width, height, seed=seed + index, quality=85)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def ensure_photos(cache: Path, count: int, seed: int, cores: int) -> list[Path]:
    """The first ``count`` photos of the seeded series, generated where missing."""
    cache.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sizes = [photo_size(rng) for _ in range(count)]
    paths = [cache / f"{i:06d}.jpg" for i in range(count)]
    jobs = [(p, i, w, h, seed) for i, (p, (w, h)) in enumerate(zip(paths, sizes)) if not p.exists()]
    if jobs:
        print(f"generating {len(jobs)} photos into {cache} (cached for later runs) ...", flush=True)
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(cores) as pool:
            for done, _ in enumerate(pool.imap_unordered(_make_photo, jobs, chunksize=16), 1):
                if done % 1000 == 0:
                    print(f"  {done}/{len(jobs)} in {time.perf_counter() - started:.0f} s", flush=True)
    return paths


# --------------------------------------------------------------------------- the site


def _serve(hosts: list[str], port_file: str, cache: str, latency: float) -> None:
    site = WebSite(hosts, latency=latency)
    folder = Path(cache)

    def resolve(host: str, path: str) -> Resource | None:
        if path == "/__stats":
            counts: dict[str, int] = {}
            for (_, p), n in site.requests.items():
                kind = p.split("/")[1] if p.count("/") > 1 else p.strip("/")
                counts[kind] = counts.get(kind, 0) + n
            counts["__stats"] = counts.get("__stats", 0) - 1
            return Resource(body=json.dumps(counts).encode(), content_type="application/json")
        parts = path.split("/")
        if len(parts) != 3:
            return None
        kind, name = parts[1], parts[2]
        if kind == "img":
            try:
                return Resource(body=(folder / name).read_bytes())
            except OSError:
                return None
        if kind == "missing":
            return Resource(404, b"not found", "text/plain")
        if kind == "forbidden":
            return Resource(403, b"forbidden", "text/plain")
        if kind == "error":
            return Resource(500, b"internal error", "text/plain")
        if kind == "page":
            return Resource(body=b"<!DOCTYPE html><html><body><h1>Not an image</h1></body></html>")
        return None

    site.resolver = resolve

    def announce() -> None:
        while not site.port:
            time.sleep(0.01)
        Path(port_file).write_text(str(site.port))

    threading.Thread(target=announce, daemon=True).start()
    site.serve_forever()


class Server:
    """The loopback site in a process of its own, restarted for each tool (fresh counts)."""

    def __init__(self, hosts: list[str], cache: Path, latency: float) -> None:
        self.hosts = hosts
        port_file = Path(tempfile.mkdtemp()) / "port"
        self.process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(hosts, str(port_file), str(cache), latency), daemon=True
        )
        self.process.start()
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if time.monotonic() > deadline or not self.process.is_alive():
                raise RuntimeError("the benchmark's web server did not start")
            time.sleep(0.05)
        time.sleep(0.1)
        self.port = int(port_file.read_text())

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://{self.hosts[0]}:{self.port}/__stats", timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(30)


def url_list(
    path: Path, photos: list[Path], total: int, failure_rate: float, hosts: list[str], port: int, seed: int
) -> dict[str, int]:
    """Write the URL list (Parquet, url + caption); returns how many URLs of each kind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed + 1)
    failures = round(total * failure_rate)
    kinds = ["img"] * (total - failures) + rng.choices([k for k, _ in FAILURES], [w for _, w in FAILURES], k=failures)
    rng.shuffle(kinds)
    urls, captions, counts = [], [], {}
    good = 0
    for i, kind in enumerate(kinds):
        host = hosts[i % len(hosts)]
        if kind == "img":
            url = f"http://{host}:{port}/img/{photos[good].name}"
            good += 1
        elif kind == "refused":
            url = f"http://127.0.2.1:{port}/img/none.jpg"  # nothing listens there
        else:
            url = f"http://{host}:{port}/{kind}/{i}.jpg"
        urls.append(url)
        captions.append(f"a photograph number {i} of a scene")
        counts[kind] = counts.get(kind, 0) + 1
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return counts


# --------------------------------------------------------------------------- measuring a tool


def _tree_rss(root: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as handle:
                rss[int(entry)] = int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str], env: dict[str, str], cores: int, log: Path) -> dict[str, float]:
    pinned = ["taskset", "-c", f"0-{cores - 1}", *command] if shutil.which("taskset") else command
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(pinned, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.2)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": wall, "cpu_seconds": cpu, "peak_memory_mb": peak / 2**20}


def stored_images(folder: Path) -> int:
    count = 0
    for shard in folder.rglob("*.tar"):
        with tarfile.open(shard) as tf:
            count += sum(1 for name in tf.getnames() if name.endswith(".jpg"))
    return count


def run_tool(tool: str, urls: Path, out: Path, args: argparse.Namespace, server: Server) -> dict[str, float]:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    if tool == "img2dataset":
        code = (
            "from img2dataset import download\n"
            f"download(url_list={str(urls)!r}, output_folder={str(out)!r}, processes_count={args.cores}, "
            f"thread_count={args.img2dataset_threads}, image_size={args.image_size}, resize_mode='keep_ratio', "
            "encode_quality=95, output_format='webdataset', input_format='parquet', url_col='url', "
            f"caption_col='caption', number_sample_per_shard={args.shard_size}, timeout={args.timeout}, retries=0, "
            f"distributor='multiprocessing', enable_wandb=False, disallowed_header_directives={OPT_OUTS!r})\n"
        )
        command = [sys.executable, "-c", code]
    else:
        command = [
            sys.executable, "-m", "cliplab", "data", "download", str(urls), str(out),
            "--image-size", str(args.image_size), "--resize-mode", "keep_ratio", "--encode-quality", "95",
            "--shard-size", str(args.shard_size), "--threads", str(args.cores),
            "--concurrency", str(args.concurrency), "--per-host", str(args.per_host),
            "--timeout", str(args.timeout), "--json",
        ]  # fmt: skip
    measured = run_measured(command, env, args.cores, out.parent / f"{tool}.log")
    measured["images"] = stored_images(out)
    measured["requests"] = server.counts()
    return measured


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=20_000, help="URLs in the list (photos + failures)")
    parser.add_argument("--failure-rate", type=float, default=0.10, help="share of failing URLs")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every response")
    parser.add_argument("--cores", type=int, default=2, help="CPUs each tool is pinned to")
    parser.add_argument("--hosts", type=int, default=16, help="loopback hosts the photos are spread over")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--timeout", type=int, default=10, help="request timeout, both tools")
    parser.add_argument("--concurrency", type=int, default=256, help="cliplab: connections in all")
    parser.add_argument("--per-host", type=int, default=16, help="cliplab: connections per host")
    parser.add_argument(
        "--img2dataset-threads", type=int, default=256, help="img2dataset: threads per process (its default)"
    )
    parser.add_argument("--only", choices=("both", "cliplab", "img2dataset"), default="both")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the generated photos are kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    good = args.urls - round(args.urls * args.failure_rate)
    photos = ensure_photos(args.cache, good, args.seed, args.cores)
    hosts = [f"127.0.1.{i + 1}" for i in range(args.hosts)]
    tools = ["img2dataset", "cliplab"] if args.only == "both" else [args.only]
    work = Path(tempfile.mkdtemp(prefix="bench-download-"))
    results: dict[str, dict] = {}
    load = os.getloadavg()
    try:
        for tool in tools:
            server = Server(hosts, args.cache, args.latency)
            try:
                urls = work / f"urls-{tool}.parquet"
                kinds = url_list(urls, photos, args.urls, args.failure_rate, hosts, server.port, args.seed)
                print(f"{tool}: {args.urls} URLs ({kinds}) ...", flush=True)
                results[tool] = run_tool(tool, urls, work / tool, args, server)
                results[tool]["kinds"] = kinds
            finally:
                server.stop()
            shutil.rmtree(work / tool, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.urls} URLs ({good} photos of 500-2,000 px, {args.urls - good} failures), latency "
          f"{args.latency * 1000:.0f} ms, {args.cores} cores each, load before {load[0]:.1f}/{load[1]:.1f}")  # fmt: skip
    header = f"{'tool':<12} {'images/s':>9} {'ok on good':>11} {'requests':>9} {'on perm. fail':>13} {'CPU s/img':>10} {'peak MB':>8}"
    print(header)
    for tool, r in results.items():
        requests = r["requests"]
        sent = sum(n for k, n in requests.items() if k not in ("__stats",))
        permanent = sum(requests.get(k, 0) for k in PERMANENT)
        r["images_per_second"] = r["images"] / r["seconds"]
        r["success_on_good"] = r["images"] / good
        r["requests_sent"] = sent
        r["requests_on_permanent_failures"] = permanent
        r["cpu_seconds_per_image"] = r["cpu_seconds"] / max(1, r["images"])
        print(
            f"{tool:<12} {r['images_per_second']:>9.1f} {100 * r['success_on_good']:>10.2f}% {sent:>9} "
            f"{permanent:>13} {r['cpu_seconds_per_image']:>10.4f} {r['peak_memory_mb']:>8.0f}"
        )
    if len(results) == 2:
        a, b = results["cliplab"], results["img2dataset"]
        print(
            f"cliplab / img2dataset: images/s x{a['images_per_second'] / b['images_per_second']:.2f}, "
            f"CPU per image x{a['cpu_seconds_per_image'] / b['cpu_seconds_per_image']:.2f}, "
            f"peak memory x{a['peak_memory_mb'] / b['peak_memory_mb']:.2f}, "
            f"success on good URLs {100 * a['success_on_good']:.2f}% vs {100 * b['success_on_good']:.2f}%, "
            f"requests on permanent failures {a['requests_on_permanent_failures']} vs {b['requests_on_permanent_failures']} "
            f"(cliplab also reads robots.txt once per host: {a['requests'].get('robots.txt', 0)})"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": load, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
