"""The compressed index at tens of millions of vectors, and what it extrapolates to at 100 M and 1 B.

Synthetic clustered unit vectors (512-d; ``max(N)/500`` clusters, as ``bench_search.py``) are generated
from a seed in chunks of 1 M and never stored raw: each chunk is encoded into the store's codes
(``vector_codes``: PQ256, 256 bytes) and added to one shard of the index, then thrown away. Queries:
image-like (new vectors from the stored clusters) and text-like (vectors from 200 clusters the data
does not hold: a text query sits apart from every image). Ground truth: exact search over the
regenerated float32 vectors, chunk by chunk, for every query. The smaller sizes are prefixes of the
largest (one training, one set of shards, one merge per size).

Two phases, both resumable (every step leaves its files in ``--dir``; run the same command again):

    # build: slow, may run while the machine is busy (its rate is then a lower bound)
    nice -n 19 python benchmarks/bench_search_scale.py --vectors 10000000 20000000 --phase build
    # measure: recall, latency (warm, then cold), resident memory; needs a quiet machine
    python benchmarks/bench_search_scale.py --vectors 10000000 20000000 --phase measure

Each size is measured in a fresh process (so its resident memory is its own), cold first (the index
files dropped from the page cache with ``posix_fadvise``), then warm. One line per size:
``vectors N recall@10 image X text Y p50 A ms p99 B ms rss C GB disk D bytes/vector build E vectors/s``,
then the extrapolation to 100 M and 1 B from the measured per-vector memory, disk and build time.
"""

from __future__ import annotations

import os

# Under load (the build may run while others work), OpenMP threads that spin while waiting slow FAISS's
# training four- to five-fold; passive waiting costs nothing when the machine is quiet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from cliplab.index import ann_ondisk as od
from cliplab.index.vector_codes import VectorCodes

DIM = 512
CHUNK = 1_000_000
K = 10


# -- the data ----------------------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x += spread * rng.standard_normal((n, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM))
    return unit(x)


class Data:
    """The generated vectors (never stored) and the query sets, all from ``seed``."""

    def __init__(self, seed: int, centres: int, queries: int):
        self.seed = seed
        self.centres = unit(np.random.default_rng([seed, 0]).standard_normal((centres, DIM), dtype=np.float32))
        self.other = unit(np.random.default_rng([seed, 1]).standard_normal((200, DIM), dtype=np.float32))
        self.queries = {
            "image": clustered(queries, self.centres, np.random.default_rng([seed, 2])),
            "text": clustered(queries, self.other, np.random.default_rng([seed, 3])),
            # distinct queries for tuning (the library tunes on the store's own vectors and its texts)
            "tune_image": clustered(500, self.centres, np.random.default_rng([seed, 4])),
            "tune_text": clustered(500, self.other, np.random.default_rng([seed, 5])),
        }

    def chunk(self, number: int, total: int) -> tuple[np.ndarray, np.ndarray]:
        rows = min(CHUNK, total - number * CHUNK)
        ids = np.arange(number * CHUNK + 1, number * CHUNK + rows + 1, dtype=np.int64)
        return ids, clustered(rows, self.centres, np.random.default_rng([self.seed, 100, number]))

    def head(self, rows: int) -> np.ndarray:
        """The first ``rows`` vectors (rows are independent draws, so this is a random sample)."""
        parts, total = [], 0
        for number in range(math.ceil(rows / CHUNK)):
            parts.append(self.chunk(number, rows)[1])
            total += len(parts[-1])
        return np.concatenate(parts)[:rows]


# -- build phase ---------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Clock:
    """Wall and CPU seconds of each build step, kept in ``build.json`` across resumed runs."""

    def __init__(self, build: od.OnDiskBuild):
        self.build = build

    def record(self, step: str, wall: float, cpu: float) -> None:
        info = self.build.info()
        steps = info.setdefault("steps", {})
        steps[step] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        self.build.save_info(info)

    def steps(self) -> dict:
        return self.build.info().get("steps", {})


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def build_phase(args, data: Data) -> None:
    root = Path(args.dir)
    sizes = sorted(args.vectors)
    largest = sizes[-1]
    nlist, m = od.choose_nlist(largest), od.choose_m(DIM)
    build = od.OnDiskBuild(root / "build")
    clock = Clock(build)
    info = build.info()
    if info.get("config") and info["config"] != _config(args, nlist, m):
        raise SystemExit(f"{root} holds a build with other settings {info['config']}; pass another --dir")
    build.save_info({**info, "config": _config(args, nlist, m)})

    all_codes = {}
    for codec in args.codecs:
        if not VectorCodes.exists(root, f"vectors-{codec}"):
            wall, cpu = time.perf_counter(), cpu_seconds()
            VectorCodes.train(root, data.head(65_536), codec, folder=f"vectors-{codec}")
            clock.record(f"codec-{codec}", time.perf_counter() - wall, cpu_seconds() - cpu)
        all_codes[codec] = VectorCodes(root, f"vectors-{codec}")

    def write_codes(ids: np.ndarray, vectors: np.ndarray) -> None:
        for codes in all_codes.values():
            codes.write(ids, vectors)

    if "train" not in clock.steps():
        log(f"training OPQ{m} + IVF{nlist} (HNSW quantizer) + PQ{m} on {min(largest, 32 * nlist):,} vectors")
        wall, cpu = time.perf_counter(), cpu_seconds()
        build.train(lambda: data.head(min(largest, 32 * nlist)), nlist, m, args.seed)
        clock.record("train", time.perf_counter() - wall, cpu_seconds() - cpu)
        log(f"trained in {time.perf_counter() - wall:.0f} s")

    n_chunks = math.ceil(largest / CHUNK)
    for number in range(n_chunks):
        if f"shard-{number}" in clock.steps() and build.shard_path(number).is_file():
            continue
        wall, cpu = time.perf_counter(), cpu_seconds()
        build.add_shards(
            [(number, lambda number=number: data.chunk(number, largest))],
            on_chunk=write_codes,
        )
        clock.record(f"shard-{number}", time.perf_counter() - wall, cpu_seconds() - cpu)
        log(f"shard {number + 1}/{n_chunks} in {time.perf_counter() - wall:.0f} s")

    for n in sizes:
        if f"merge-{n}" not in clock.steps():
            wall, cpu = time.perf_counter(), cpu_seconds()
            build.merge([build.shard_path(i) for i in range(math.ceil(n / CHUNK))], root / f"merged-{n}")
            clock.record(f"merge-{n}", time.perf_counter() - wall, cpu_seconds() - cpu)
            log(f"merged {n:,} in {time.perf_counter() - wall:.0f} s")

    truth_path = root / "truth.npz"
    if not truth_path.is_file():
        log(f"exact ground truth over {largest:,} vectors for {sum(len(q) for q in data.queries.values())} queries")
        queries = np.concatenate(list(data.queries.values()))
        chunks = (data.chunk(i, largest) for i in range(n_chunks))
        _, _, kept = od.exact_top(queries, chunks, K, checkpoints=sizes)
        arrays, start = {}, 0
        for name, q in data.queries.items():
            for n in sizes:
                arrays[f"{name}-{n}"] = kept[n][1][start : start + len(q)]
            start += len(q)
        with open(truth_path.with_suffix(".tmp.npz"), "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(truth_path.with_suffix(".tmp.npz"), truth_path)

    truth = np.load(truth_path)
    for n, codec in [(n, c) for n in sizes for c in args.codecs]:
        codes = all_codes[codec]
        params_path = root / f"params-{n}-{codec}.json"
        if params_path.is_file():
            continue
        wall, cpu = time.perf_counter(), cpu_seconds()
        params = od.CompressedParams(
            "image", nlist=nlist, m=m, built_count=n, built_max_id=n, coarse_similarity=info.get("coarse_similarity", 0)
        )
        index = od.CompressedIndex(od.read_merged(root / f"merged-{n}" / "index"), params, codes)
        sets = [
            od.TuningSet(data.queries["tune_image"], truth[f"tune_image-{n}"], od.TARGET_RECALL),
            od.TuningSet(data.queries["tune_text"], truth[f"tune_text-{n}"], od.TARGET_RECALL_OTHER),
        ]
        params.nprobe, params.rerank, recalls = od.tune(index, sets)
        params.tuned_recall, params.tuned_recall_other = recalls
        clock.record(f"tune-{n}-{codec}", time.perf_counter() - wall, cpu_seconds() - cpu)
        params_path.write_text(json.dumps(asdict(params), indent=1))
        log(f"{n:,} {codec}: tuned nprobe {params.nprobe}, re-rank {params.rerank}x, recall {recalls}")
    log(f"build done; {root} holds {_du(root) / 1e9:.2f} GB")


def _config(args, nlist: int, m: int) -> dict:
    return {
        "codecs": args.codecs,
        "seed": args.seed,
        "centres": args.centres,
        "queries": args.queries,
        "nlist": nlist,
        "m": m,
        "chunk": args.chunk,
    }


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file())


def build_seconds(steps: dict, n: int, codec: str) -> tuple[float, float]:
    """Wall and CPU seconds of everything an index of ``n`` vectors needed. The shards also encoded the
    other codecs measured side by side (SQ encoding: about 2 us a vector each), counted in full."""
    names = [f"codec-{codec}", "train", f"merge-{n}", f"tune-{n}-{codec}"]
    names += [f"shard-{i}" for i in range(math.ceil(n / CHUNK))]
    return sum(steps[s]["wall_s"] for s in names if s in steps), sum(steps[s]["cpu_s"] for s in names if s in steps)


# -- measure phase -----------------------------------------------------------------------------------
def drop_from_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def memory(mapped: tuple[str, ...] = ()) -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, and the resident bytes of each mapped file
    whose name ends with one of ``mapped`` (from /proc/self/smaps)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5:
            name = parts[5] if len(parts) > 5 else ""
            current = next((m for m in mapped if name.endswith(m)), None)
        elif current and line.startswith("Rss:"):
            fields[current] = fields.get(current, 0) + int(parts[1]) * 1024
    return fields


def each_query_ms(run, queries: np.ndarray) -> tuple[np.ndarray, list]:
    """``run(query[None])`` for each query alone: its milliseconds and its results."""
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(run(q[None]))
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times), results


def single_query_ms(index: od.CompressedIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    times, results = each_query_ms(lambda q: index.search(q, K)[1][0], queries)
    return times, np.stack(results)


def candidate_ms(index: od.CompressedIndex, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of the list-scan stage alone (coarse search + PQ scan) of each single query."""
    depth = max(K, index.params.rerank * K)
    return each_query_ms(lambda q: index.candidates(q, depth), queries)[0]


def measure_one(args, data: Data, n: int, codec: str) -> dict:
    """Runs in its own process: cold then warm single queries over the index of ``n`` vectors."""
    root = Path(args.dir)
    faiss.omp_set_num_threads(args.threads)
    merged = root / f"merged-{n}"
    files = [merged / "index", merged / "lists.ivfdata", root / f"vectors-{codec}" / "codes.u8"]
    drop_from_cache(files)
    params = od.CompressedParams(**json.loads((root / f"params-{n}-{codec}.json").read_text()))
    base = memory()
    start = time.perf_counter()
    index = od.CompressedIndex(od.read_merged(merged / "index"), params, VectorCodes(root, f"vectors-{codec}"))
    open_s = time.perf_counter() - start
    truth = np.load(root / "truth.npz")
    cold_queries = np.concatenate([data.queries["image"][:100], data.queries["text"][:100]])
    cold_ms, _ = single_query_ms(index, cold_queries)
    # warm: every query once in a batch (pages in), then each one timed alone
    for name in ("image", "text"):
        index.search(data.queries[name], K)
    result = {"vectors": n, "codec": codec, "nlist": params.nlist, "nprobe": params.nprobe, "rerank": params.rerank}
    all_ms = []
    for name in ("image", "text"):
        ms, found = single_query_ms(index, data.queries[name])
        all_ms.append(ms)
        result[f"recall_{name}"] = round(od.recall(found, truth[f"{name}-{n}"]), 4)
        result[f"p50_{name}_ms"] = round(float(np.percentile(ms, 50)), 3)
        result[f"p99_{name}_ms"] = round(float(np.percentile(ms, 99)), 3)
    ms = np.concatenate(all_ms)
    # the scan stage of the same queries, timed alone: what grows with the vectors per list
    scan_ms = np.concatenate([candidate_ms(index, data.queries[name]) for name in ("image", "text")])
    mem = memory(("lists.ivfdata", "codes.u8"))
    disk = _du(merged) + n * index.codes.width + (root / f"vectors-{codec}" / "codec.faiss").stat().st_size
    steps = Clock(od.OnDiskBuild(root / "build")).steps()
    wall, cpu = build_seconds(steps, n, codec)
    result.update(
        {
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "scan_p50_ms": round(float(np.percentile(scan_ms, 50)), 3),
            "single_ms": [round(float(v), 4) for v in ms],
            "scan_ms": [round(float(v), 4) for v in scan_ms],
            "cold_p50_ms": round(float(np.percentile(cold_ms, 50)), 3),
            "cold_p99_ms": round(float(np.percentile(cold_ms, 99)), 3),
            "open_s": round(open_s, 2),
            "rss_bytes": mem["VmRSS"],
            "rss_anon_bytes": mem["RssAnon"],
            "rss_file_bytes": mem["RssFile"],
            "rss_lists_bytes": mem.get("lists.ivfdata", 0),
            "rss_codes_bytes": mem.get("codes.u8", 0),
            "queries_run": int(len(cold_queries) + 2 * sum(len(data.queries[n]) for n in ("image", "text"))),
            "shards_wall_s": round(
                sum(
                    v["wall_s"]
                    for k, v in steps.items()
                    if k.startswith("shard-") and int(k[6:]) < math.ceil(n / CHUNK)
                ),
                1,
            ),
            "train_wall_s": steps.get("train", {}).get("wall_s", 0.0),
            "rss_before_open_bytes": base["VmRSS"],
            "disk_bytes": disk,
            "disk_bytes_per_vector": round(disk / n, 1),
            "lists_bytes": (merged / "lists.ivfdata").stat().st_size,
            "index_file_bytes": (merged / "index").stat().st_size,
            "build_wall_s": round(wall, 1),
            "build_cpu_s": round(cpu, 1),
            "build_vectors_per_s": round(n / wall, 1),
            "threads": args.threads,
        }
    )
    return result


def line(r: dict) -> str:
    return (
        f"codes {r['codec']}: vectors {r['vectors']} recall@10 image {r['recall_image']:.3f} text {r['recall_text']:.3f} "
        f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms rss {r['rss_bytes'] / 2**30:.2f} GB "
        f"disk {r['disk_bytes_per_vector']:.0f} bytes/vector build {r['build_vectors_per_s']:.0f} vectors/s"
    )


def quantizer_bytes(nlist: int) -> int:
    """The coarse centroids and their HNSW graph (32 links a level-0 node, 4-byte ids)."""
    return nlist * (DIM * 4 + 2 * 32 * 4 + 16)


def extrapolate(results: list[dict], target: int) -> dict:
    """From the largest measured size (and the slope between the two largest, for anonymous memory):

    * anonymous memory: measured slope per vector (Python, the removed-id set, ...) plus the
      quantizer at the target's ``nlist`` in place of the measured one;
    * mapped lists: all of ``lists.ivfdata`` resident (the worst case, every list probed);
    * mapped codes: as measured (it grows with the queries served, not with the vectors: each
      query touches ``rerank x k`` pages; the kernel reclaims them under memory pressure);
    * disk: the measured bytes per vector of the lists and the codes, plus the quantizer;
    * build: shards and merge per vector as measured, training in proportion to ``nlist`` (its
      sample is 32 vectors a list);
    * latency: each measured query's list-scan stage (coarse search + PQ scan, timed alone) grows
      with the vectors per list at the same ``nprobe``; its re-ranking (the same number of
      candidates) does not. Pessimistic for the coarse search, which grows only with log ``nlist``."""
    b = results[-1]
    a = results[-2] if len(results) > 1 else None
    nlist = od.choose_nlist(target)
    anon_slope = (b["rss_anon_bytes"] - a["rss_anon_bytes"]) / (b["vectors"] - a["vectors"]) if a else 0.0
    anon = b["rss_anon_bytes"] + max(anon_slope, 0.0) * (target - b["vectors"])
    anon += quantizer_bytes(nlist) - quantizer_bytes(b["nlist"])
    lists = b["lists_bytes"] / b["vectors"] * target
    codes_resident = b["rss_codes_bytes"]
    width = (b["disk_bytes"] - b["lists_bytes"] - b["index_file_bytes"]) / b["vectors"]
    disk = (b["lists_bytes"] / b["vectors"] + width) * target + b["index_file_bytes"] - quantizer_bytes(b["nlist"])
    disk += quantizer_bytes(nlist)
    per_vector_s = (b["build_wall_s"] - b["train_wall_s"]) / b["vectors"]
    build_s = per_vector_s * target + b["train_wall_s"] * nlist / b["nlist"]
    growth = (target / nlist) / (b["vectors"] / b["nlist"])
    estimate = np.array(b["single_ms"]) + np.array(b["scan_ms"]) * (growth - 1)
    return {
        "vectors": target,
        "nlist": nlist,
        "rss_anon_bytes": int(anon),
        "rss_lists_bytes": int(lists),
        "rss_codes_bytes": int(codes_resident),
        "rss_bytes": int(anon + lists + codes_resident),
        "disk_bytes_per_vector": round(disk / target, 1),
        "build_wall_s": round(build_s),
        "build_vectors_per_s": round(target / build_s),
        "largest_chunk_s": round(per_vector_s * CHUNK),
        "scan_growth": round(growth, 2),
        "p50_ms_estimate": round(float(np.percentile(estimate, 50)), 2),
        "p99_ms_estimate": round(float(np.percentile(estimate, 99)), 2),
    }


def measure_phase(args) -> list[dict]:
    results = []
    for codec in args.codecs:
        measured = []
        for n in sorted(args.vectors):
            command = [sys.executable, __file__, "--phase", "measure-one", "--vectors", str(n), *_passthrough(args)]
            command += ["--codecs", codec]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            measured.append(json.loads(output.strip().splitlines()[-1]))
            print(line(measured[-1]), flush=True)
        results += measured
        results += _extrapolations(measured, codec)
    return results


def _extrapolations(results: list[dict], codec: str) -> list[dict]:
    out = []
    for target in (100_000_000, 1_000_000_000):
        e = extrapolate(results, target)
        print(
            f"codes {codec}: extrapolated {target}: rss {e['rss_bytes'] / 2**30:.2f} GB (anonymous "
            f"{e['rss_anon_bytes'] / 2**30:.2f}, every list mapped {e['rss_lists_bytes'] / 2**30:.2f}, codes pages "
            f"touched {e['rss_codes_bytes'] / 2**30:.2f}) disk {e['disk_bytes_per_vector']:.0f} bytes/vector "
            f"build {e['build_wall_s'] / 3600:.1f} h at {e['build_vectors_per_s']} vectors/s in chunks of "
            f"{e['largest_chunk_s'] / 60:.0f} min (nlist {e['nlist']}; list scan x{e['scan_growth']} at the same "
            f"nprobe: p50 ~{e['p50_ms_estimate']} ms, p99 ~{e['p99_ms_estimate']} ms)"
        )
        out.append({"extrapolated": True, "codec": codec, **e})
    return out


def _passthrough(args) -> list[str]:
    return [
        "--dir",
        str(args.dir),
        "--seed",
        str(args.seed),
        "--centres",
        str(args.centres),
        "--queries",
        str(args.queries),
        "--threads",
        str(args.threads),
        "--chunk",
        str(args.chunk),
    ]  # --codecs is set per call


def main() -> None:
    global CHUNK
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, nargs="+", default=[10_000_000, 20_000_000])
    parser.add_argument("--phase", choices=("build", "measure", "all", "measure-one"), default="all")
    parser.add_argument(
        "--dir",
        default=str(Path.home() / ".cache" / "cliplab-bench" / "scale"),
        help="where the build lives (resumable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--centres", type=int, help="clusters in the data (default: largest size / 500)")
    parser.add_argument("--queries", type=int, default=1000, help="measured queries of each kind")
    parser.add_argument(
        "--codecs",
        nargs="+",
        default=["SQ8", "SQ4"],
        help="store codes measured side by side (re-ranking): SQ4, SQ6, SQ8 = 256, 384, 512 bytes for 512-d",
    )
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads while measuring (single queries)")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="vectors per shard (sizes must be multiples)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    CHUNK = args.chunk
    if any(n % CHUNK for n in args.vectors):
        parser.error(f"every --vectors size must be a multiple of --chunk {CHUNK}")
    args.centres = args.centres or max(100, max(args.vectors) // 500)
    data = Data(args.seed, args.centres, args.queries)
    if args.phase == "measure-one":
        print(json.dumps(measure_one(args, data, args.vectors[0], args.codecs[0])))
        return
    if args.phase in ("build", "all"):
        build_phase(args, data)
    if args.phase in ("measure", "all"):
        results = measure_phase(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
