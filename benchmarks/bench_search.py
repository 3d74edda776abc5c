"""Search speed and quality of the store's FAISS indexes at 100k and 1M vectors.

Synthetic clustered unit vectors (512-d, like ViT-B/32 embeddings) stand in for a photo library.
For each size: build time of the tuned IVF index, recall@10 against exact search and single-query
latency p50/p99 (text encoding excluded) for exact search and for the IVF index, with two query sets:
new vectors from the stored clusters, and vectors from clusters the store does not hold (as a text
query sits apart from every image). Then the end-to-end latency of a text query: ViT-B/32's text tower
(random weights; the cost does not depend on them) plus the IVF search over 1M vectors.

    python benchmarks/bench_search.py              # 100k and 1M
    python benchmarks/bench_search.py --sizes 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from cliplab.index import ann

DIM = 512


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, DIM), dtype=np.float32) / np.sqrt(
        DIM
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def latencies_ms(index: ann.VectorIndex, queries: np.ndarray, k: int = 10) -> np.ndarray:
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], k)
        times.append((time.perf_counter() - start) * 1000)
    return np.array(times)


def bench_size(n: int, n_queries: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(100, n // 500), DIM), dtype=np.float32))
    vectors = clustered(n, centres, rng)
    ids = np.arange(1, n + 1, dtype=np.int64)
    other_centres = unit(rng.standard_normal((200, DIM), dtype=np.float32))
    query_sets = {
        "same clusters": clustered(n_queries, centres, rng),
        "other clusters": clustered(n_queries, other_centres, rng),
    }

    exact = ann.flat_index("image", ids, vectors)
    start = time.perf_counter()
    ivf = ann.ivf_index("image", ids, vectors)
    build_s = time.perf_counter() - start
    result = {
        "n": n,
        "build_s": round(build_s, 1),
        "nlist": ivf.params.nlist,
        "nprobe": ivf.params.nprobe,
        "tuned_recall": ivf.params.tuned_recall,
        "queries": {},
    }
    for name, queries in query_sets.items():
        _, truth = exact.search(queries, 10)
        _, found = ivf.search(queries, 10)
        exact_ms = latencies_ms(exact, queries[:100])
        ivf_ms = latencies_ms(ivf, queries)
        result["queries"][name] = {
            "recall@10": round(ann.recall_at_k(found, truth), 4),
            "ivf_p50_ms": round(float(np.percentile(ivf_ms, 50)), 3),
            "ivf_p99_ms": round(float(np.percentile(ivf_ms, 99)), 3),
            "exact_p50_ms": round(float(np.percentile(exact_ms, 50)), 3),
        }
    # A store holding texts too tunes nprobe with them as queries (see cliplab.index.ann.ivf_index).
    start = time.perf_counter()
    cross = ann.ivf_index("image", ids, vectors, other_queries=clustered(2000, other_centres, rng))
    result["cross_tuned"] = {"build_s": round(time.perf_counter() - start, 1), "nprobe": cross.params.nprobe}
    queries = query_sets["other clusters"]
    _, truth = exact.search(queries, 10)
    _, found = cross.search(queries, 10)
    cross_ms = latencies_ms(cross, queries)
    result["cross_tuned"].update(
        {
            "recall@10": round(ann.recall_at_k(found, truth), 4),
            "ivf_p50_ms": round(float(np.percentile(cross_ms, 50)), 3),
            "ivf_p99_ms": round(float(np.percentile(cross_ms, 99)), 3),
        }
    )
    del cross
    result["_ivf"] = ivf
    return result


def text_query_latency(index: ann.VectorIndex, n: int = 200) -> dict:
    import torch

    from cliplab import Pipeline
    from cliplab.model import CLIP, get_preset

    torch.manual_seed(0)
    pipeline = Pipeline(CLIP(get_preset("ViT-B/32")).eval(), device="cpu")
    queries = [f"a photo of {w} in the snow" for w in ("two dogs", "a red car", "my grandmother", "a tent")] * (n // 4)
    pipeline.embed_texts(queries[:4])  # warm-up
    encode, total = [], []
    for query in queries:
        start = time.perf_counter()
        vector = pipeline.embed_texts([query])[0]
        middle = time.perf_counter()
        index.search(vector[None], 10)
        end = time.perf_counter()
        encode.append((middle - start) * 1000)
        total.append((end - start) * 1000)
    return {
        "encode_p50_ms": round(float(np.percentile(encode, 50)), 2),
        "end_to_end_p50_ms": round(float(np.percentile(total, 50)), 2),
        "end_to_end_p99_ms": round(float(np.percentile(total, 99)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {DIM}-d vectors, k=10")
    print(
        f"{'vectors':>9} {'queries':<15} {'recall@10':>9} {'IVF p50':>9} {'IVF p99':>9} {'exact p50':>10}  "
        f"{'speed-up':>8}  index"
    )
    results = []
    for n in args.sizes:
        r = bench_size(n, args.queries)
        ivf = r.pop("_ivf")
        for name, q in r["queries"].items():
            print(
                f"{n:>9,} {name:<15} {q['recall@10']:>9.3f} {q['ivf_p50_ms']:>7.2f}ms {q['ivf_p99_ms']:>7.2f}ms "
                f"{q['exact_p50_ms']:>8.2f}ms  {q['exact_p50_ms'] / q['ivf_p50_ms']:>7.1f}x  IVF{r['nlist']},"
                f"nprobe {r['nprobe']}, built in {r['build_s']} s"
            )
        c, q = r["cross_tuned"], r["queries"]["other clusters"]
        print(
            f"{n:>9,} {'other, tuned':<15} {c['recall@10']:>9.3f} {c['ivf_p50_ms']:>7.2f}ms {c['ivf_p99_ms']:>7.2f}ms "
            f"{q['exact_p50_ms']:>8.2f}ms  {q['exact_p50_ms'] / c['ivf_p50_ms']:>7.1f}x  IVF{r['nlist']},"
            f"nprobe {c['nprobe']} (tuned with such queries)"
        )
        if n == max(args.sizes):
            r["text_query"] = text_query_latency(ivf)
            t = r["text_query"]
            print(
                f"end-to-end text query over {n:,} vectors (ViT-B/32 text tower + IVF search): p50 "
                f"{t['end_to_end_p50_ms']:.1f} ms, p99 {t['end_to_end_p99_ms']:.1f} ms "
                f"(text encoding alone p50 {t['encode_p50_ms']:.1f} ms)"
            )
        results.append(r)
        del ivf
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
