"""Start-up of one-shot commands: `cliplab --help`, and `cliplab search STORE "text"` on the torch path
against the torch-free path (the cached ONNX text encoder), each as a fresh process, median of N runs.

    python benchmarks/bench_startup.py                         # the default model, on the demo's store
    python benchmarks/bench_startup.py --store S --runs 7      # any store (its recorded model is used)

The demo's store is `$CLIPLAB_HOME/stores/held-out` (run `make demo` first). Run on a quiet machine
with a warm file cache (the first run of each kind is discarded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cliplab.paths import cliplab_home


def timed(command: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run(command, env=env, capture_output=True, check=True, timeout=600)  # warm the file cache
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True, timeout=600)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=str(cliplab_home() / "stores" / "held-out"))
    parser.add_argument("--query", default="a red apple")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cliplab = [sys.executable, "-m", "cliplab"]
    env = dict(os.environ)
    if not (Path(args.store) / "store.sqlite").is_file():
        sys.exit(f"{args.store} is not a store: run `make demo` first, or pass --store")

    rows = [("cliplab --help", timed([*cliplab, "--help"], args.runs, env))]
    search = [*cliplab, "search", args.store, args.query, "-k", "5"]
    # The torch path: naming the model skips the cached encoder (auto computes one query in fp32);
    # bf16 is what auto chose before one-shot work got fp32.
    model = _store_model(args.store)
    rows.append(("search, torch path (fp32)", timed([*search, "--model", model], args.runs, env)))
    rows.append(
        ("search, torch path (bf16)", timed([*search, "--model", model, "--precision", "bf16"], args.runs, env))
    )
    subprocess.run(search, env=env, capture_output=True, check=True, timeout=600)  # caches the ONNX encoder
    rows.append(("search, cached ONNX text encoder", timed(search, args.runs, env)))
    fast = statistics.median(rows[-1][1])
    print(f"store {args.store}, model {_store_model(args.store)}, {args.runs} runs each (median; min-max)")
    for name, seconds in rows:
        median = statistics.median(seconds)
        print(
            f"  {name:36} {median:6.2f} s  ({min(seconds):.2f}-{max(seconds):.2f})  "
            f"x{median / fast:4.1f} the cached path"
        )


def _store_model(store: str) -> str:
    from cliplab.index.store import read_store_model

    identity = read_store_model(store)
    assert identity is not None
    return identity.name


if __name__ == "__main__":
    main()
