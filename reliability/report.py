"""``make reliability``: bad inputs through every entry point, injected faults, and a load test of
the service, summed up in one table (and ``out/reliability/report.json``).

    python -m reliability.report [--kills 20] [--load-seconds 30] [--quick]

``--quick`` is the short subset the test suite runs (3 kills each, a 5-second load test).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from . import bad_inputs, entry_points, faults, load


def _model(work: Path) -> str:
    import torch

    from cliplab.checkpoints import write_checkpoint
    from cliplab.model import CLIP, get_preset

    torch.manual_seed(0)
    path = work / "model"
    write_checkpoint(CLIP(get_preset("ViT-nano")).eval(), path, "cliplab")
    return str(path)


def run(work: Path, kills: int, load_seconds: float, clients: int) -> dict:
    model = _model(work)
    report: dict = {}
    started = time.perf_counter()
    entries = bad_inputs.build(work / "bad-inputs")
    rows = entry_points.run_all(entries, model, work / "entry-points")
    summary = json.loads((work / "entry-points" / "bad_inputs_summary.json").read_text())
    report["inputs"] = [
        {
            "name": r.entry.name,
            "kind": r.entry.kind,
            "what": r.entry.what,
            "expect": r.entry.expect,
            "passed": r.passed,
            "outcomes": r.outcomes,
        }
        for r in rows
    ]
    report["inputs_summary"] = summary
    print(f"bad inputs done in {time.perf_counter() - started:.0f} s", flush=True)
    report["faults"] = []
    for name, function in (
        ("index", lambda: faults.kill_indexing(model, work / "kill-index", kills=kills)),
        ("train", lambda: faults.kill_training(work / "kill-train", kills=kills)),
        ("disk", lambda: faults.full_disk(model, work / "disk")),
        ("writers", lambda: faults.two_writers(model, work / "writers")),
    ):
        (work / f"kill-{name}").mkdir(exist_ok=True)
        report["faults"].append(function())
        print(f"fault {name} done at {time.perf_counter() - started:.0f} s", flush=True)
    from test_index import write_images  # the test suite's image maker (faults put tests/ on sys.path)

    from cliplab import load as load_model
    from cliplab.index import index_paths

    write_images(work / "served", 500, size=(96, 72), seed=11)
    index_paths(load_model(model), work / "served-store", [work / "served"], progress=False)
    server, url = load.start_server(work / "served-store", model)
    try:
        report["load"] = load.run_load(url, server.pid, clients=clients, seconds=load_seconds)
        # Again while an indexer adds 1,000 images to the served store.
        write_images(work / "added", 1000, size=(96, 72), seed=12)
        indexer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cliplab",
                "index",
                str(work / "added"),
                "--store",
                str(work / "served-store"),
                "--model",
                model,
                "--batch-size",
                "16",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        report["load_during_index"] = load.run_load(url, server.pid, clients=clients, seconds=load_seconds)
        report["load_during_index"]["indexer_exit"] = indexer.wait(timeout=900)
        report["load_during_index"]["images_after"] = httpx.get(url + "/api/health").json()["images"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def print_table(report: dict) -> None:
    rows = report["inputs"]
    print("\nBAD INPUTS (each through every entry point that takes it)")
    print(f"{'input':<24} {'kind':<10} {'expect':<6} {'result':<6} outcomes")
    for row in rows:
        outcomes = "; ".join(f"{k}: {v.split(':')[0]}" for k, v in row["outcomes"].items())
        print(
            f"{row['name']:<24} {row['kind']:<10} {row['expect']:<6} {'pass' if row['passed'] else 'FAIL':<6} "
            f"{outcomes}"
        )
    passed = sum(r["passed"] for r in rows)
    s = report["inputs_summary"]
    print(
        f"{passed}/{len(rows)} inputs handled as required; pickled code ran: {'YES' if s['code_ran'] else 'no'}; "
        f"stored item kept through the bad batch: {'yes' if s['nothing_lost'] else 'NO'}"
    )
    print("\nFAULTS")
    for fault in report["faults"]:
        details = {
            k: v for k, v in fault.items() if k not in ("fault", "items_after_each_kill", "last_step_after_each_kill")
        }
        print(f"{fault['fault']:<32} " + ", ".join(f"{k}={v}" for k, v in details.items()))
    lo = report["load"]
    print("\nLOAD (loopback, mixed text and image searches)")
    print(
        f"{lo['clients']} clients for {lo['seconds']} s: {lo['requests']} requests, {lo['requests_per_s']}/s, "
        f"p50 {lo['p50_ms']} ms, p99 {lo['p99_ms']} ms, errors {lo['errors']}, server RSS {lo['rss_mb_start']} -> "
        f"{lo['rss_mb_end']} MB (max {lo['rss_mb_max']}, growth over the last two thirds "
        f"{lo['rss_growth_last_two_thirds_mb']} MB)"
    )
    li = report["load_during_index"]
    print(
        f"the same while `cliplab index` added 1,000 images (exit {li['indexer_exit']}, store then held "
        f"{li['images_after']}): {li['requests']} requests, {li['requests_per_s']}/s, p50 {li['p50_ms']} ms, "
        f"p99 {li['p99_ms']} ms, errors {li['errors']}"
    )
    lost = sum(f.get("lost", 0) for f in report["faults"]) + (0 if s["nothing_lost"] else 1)
    print(f"\nITEMS LOST: {lost}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the short subset: 3 kills, 5 s of load")
    parser.add_argument("--out", default="out/reliability")
    args = parser.parse_args()
    if args.quick:
        args.kills, args.load_seconds = 3, 5.0
    work = Path(tempfile.mkdtemp(prefix="cliplab-reliability-"))
    try:
        report = run(work, args.kills, args.load_seconds, args.clients)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"\nfull report: {out / 'report.json'} ({report['seconds']} s)")
    failed = [r["name"] for r in report["inputs"] if not r["passed"]]
    lost = sum(f.get("lost", 0) for f in report["faults"])
    return 1 if failed or lost or report["load"]["errors"] or report["load_during_index"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
