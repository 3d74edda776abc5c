"""How many bytes a vector's re-ranking code needs on ``bench_search_scale.py``'s data.

The scale benchmark's vectors are isotropic blobs of 500 points around random centres (512-d): a
query's neighbours all sit at nearly the same cosine, so re-ranking recall is set by how precisely a
code keeps inner products. Three measurements on a small sample with the same cluster size
(``--clusters`` x 500 points, seconds on one core):

1. **The error a code may make.** Exact scores plus Gaussian noise of standard deviation ``eps`` (an
   ideal code whose inner-product error is ``eps``): recall@10 against exact search, image-like and
   text-like queries.
2. **The least bytes any code needs for that error** (Shannon's rate-distortion bound for a Gaussian
   source): the part of a vector no coarse centroid predicts is Gaussian with per-dimension variance
   ``spread^2 / (1 + spread^2) / dim``, and a mean squared error ``eps^2`` per dimension needs
   ``0.5 * log2(variance / eps^2)`` bits a dimension even when the decoder knows the centre for free.
3. **What scalar codes reach**: the store's SQ codes (each dimension's range from a sample) on the raw
   vectors, and on the residuals to a k-means centroid (as IVF-SQ "by residual" codes do), with the
   range from the sample or clipped at 3 standard deviations; the exact top 200 re-ranked by the
   decoded vectors.

    python benchmarks/code_budget.py
"""

from __future__ import annotations

import argparse
import math

import faiss
import numpy as np
from bench_search_scale import DIM, K, clustered, unit

from cliplab.index.ann_ondisk import recall


def scalar_codes(x: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    """Encode and decode with ``bits`` uniform levels a dimension between ``low`` and ``high``."""
    levels = 2**bits - 1
    codes = np.clip(np.round((x - low) / (high - low) * levels), 0, levels)
    return (low + codes / levels * (high - low)).astype(np.float32)


def sample_range(x: np.ndarray, widen: float = 1.02) -> tuple[np.ndarray, np.ndarray]:
    """Each dimension's sample range widened by 2 %, as ``VectorCodes.train`` does."""
    low, high = x.min(0), x.max(0)
    middle, half = (low + high) / 2, (high - low) / 2 * widen
    return middle - half, middle + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=200, help="clusters of 500 points (default: 200)")
    parser.add_argument("--queries", type=int, default=500, help="queries of each kind (default: 500)")
    parser.add_argument("--spread", type=float, default=0.5, help="the generator's spread (default: 0.5)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((args.clusters, DIM), dtype=np.float32))
    other = unit(rng.standard_normal((200, DIM), dtype=np.float32))
    x = clustered(500 * args.clusters, centres, np.random.default_rng(1), args.spread)
    queries = {
        "image": clustered(args.queries, centres, np.random.default_rng(2), args.spread),
        "text": clustered(args.queries, other, np.random.default_rng(3), args.spread),
    }
    scores = {name: q @ x.T for name, q in queries.items()}
    truth = {name: np.argsort(-s, axis=1)[:, :K] for name, s in scores.items()}
    candidates = {name: np.argsort(-s, axis=1)[:, :200] for name, s in scores.items()}
    variance = args.spread**2 / (1 + args.spread**2) / DIM

    print("1-2. inner-product error of an ideal code -> recall@10; the least bytes a code needs for it")
    for eps in (0.0002, 0.0004, 0.0006, 0.0008, 0.0009, 0.001, 0.0015, 0.002):
        noise = np.random.default_rng(5)
        found = {}
        for name, s in scores.items():
            noisy = s + eps * noise.standard_normal(s.shape, dtype=np.float32)
            found[name] = recall(np.argpartition(-noisy, K, axis=1)[:, :K], truth[name])
        bits = max(0.0, 0.5 * math.log2(variance / eps**2))
        print(
            f"  eps {eps:.4f}: recall image {found['image']:.3f} text {found['text']:.3f}; "
            f"bound {bits:.2f} bits/dim = {bits * DIM / 8:.0f} bytes"
        )

    kmeans = faiss.Kmeans(DIM, min(256, args.clusters), niter=10, seed=0)
    kmeans.train(x[: min(len(x), 65_536)])
    _, assigned = kmeans.index.search(x, 1)
    centroid = kmeans.centroids[assigned[:, 0]]
    residual = x - centroid
    sample = residual[:65_536]
    print("3. scalar codes, recall@10 image / text after re-ranking the exact top 200")
    for bits in (4, 5, 6, 7, 8):
        decoded = {
            "raw": scalar_codes(x, *sample_range(x[:65_536]), bits),
            "residual": centroid + scalar_codes(residual, *sample_range(sample), bits),
            "residual, +-3 sd": centroid
            + scalar_codes(residual, sample.mean(0) - 3 * sample.std(0), sample.mean(0) + 3 * sample.std(0), bits),
        }
        row = []
        for label, vectors in decoded.items():
            r = []
            for name, q in queries.items():
                cand = candidates[name]
                d = np.einsum("qd,qcd->qc", q, vectors[cand])
                r.append(recall(np.take_along_axis(cand, np.argsort(-d, axis=1)[:, :K], axis=1), truth[name]))
            row.append(f"{label} {r[0]:.3f} / {r[1]:.3f}")
        print(f"  {bits} bits ({bits * DIM // 8} bytes): " + "; ".join(row))


if __name__ == "__main__":
    main()
