"""Injected faults: kill -9 at random moments (indexing and training), a full disk, two writers.

Each function returns a dict of what it did and found; ``lost`` counts committed items that a later
look did not find (must be 0). Used by ``tests/test_reliability.py`` (a few kills) and by
``make reliability`` (20 or more).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from test_index import write_images  # noqa: E402  (shared data makers of the test suite)
from test_train_loop import losses, make_shapes_dataset, write_config  # noqa: E402


def _cliplab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cliplab", *args]


def _store_snapshot(store_dir: Path) -> dict[str, bytes]:
    """key -> vector bytes of every committed item; checks the database's integrity on the way."""
    from cliplab.index import Store

    with Store(store_dir) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0]: row[1] for row in store._db.execute("SELECT key, vector FROM items")}


def _kill_at_a_random_moment(process: subprocess.Popen, rng: random.Random, max_delay_s: float, progressing) -> None:
    """SIGKILL ``process``: one time in four while it starts up (uniform up to ``max_delay_s``),
    otherwise at a uniform moment up to ``max_delay_s / 4`` after ``progressing()`` first holds, so
    most kills land in the middle of real work rather than before it or after the end."""
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.1, max_delay_s))
    else:
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline and not progressing():
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, max_delay_s / 4))
    process.send_signal(signal.SIGKILL)
    process.wait()


def _committed(store_dir: Path) -> int:
    if not (store_dir / "store.sqlite").exists():
        return 0
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{store_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=5)
        ) as db:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0


def _last_step(run: Path) -> int:
    try:
        return max((s for s, _ in losses(run)), default=0) if (run / "metrics.jsonl").exists() else 0
    except ValueError:  # a line being written
        return 0


def kill_indexing(
    model: str, work: Path, kills: int = 20, photos: int = 16000, seed: int = 0, max_delay_s: float = 6.0
) -> dict:
    """Kill ``cliplab index`` with SIGKILL ``kills`` times at random moments, then let it finish.

    After every kill the store must open and pass SQLite's integrity check, and hold every item an
    earlier look had seen, with the same vector. The finished store must equal a clean run's."""
    from cliplab import load
    from cliplab.index import index_paths

    rng = random.Random(seed)
    folder = work / "photos"
    write_images(folder, photos, size=(56, 48))
    store = work / "killed-store"
    command = _cliplab(
        "index", str(folder), "--store", str(store), "--model", model, "--batch-size", "8", "--workers", "1", "--json"
    )
    seen: dict[str, bytes] = {}
    opened, lost, counts = 0, 0, []
    for _ in range(kills):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = len(seen)
        _kill_at_a_random_moment(process, rng, max_delay_s, lambda: _committed(store) > before)
        if not (store / "store.sqlite").exists():
            counts.append(0)
            continue
        now = _store_snapshot(store)
        opened += 1
        lost += sum(1 for key, vector in seen.items() if now.get(key) != vector)
        seen.update(now)
        counts.append(len(now))
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    final = _store_snapshot(store)
    lost += sum(1 for key, vector in seen.items() if final.get(key) != vector)
    clean = work / "clean-store"
    index_paths(load(model), clean, [folder], batch_size=8, workers=0, progress=False)
    reference = _store_snapshot(clean)
    max_diff = (
        max(
            float(np.abs(np.frombuffer(final[k], np.float32) - np.frombuffer(reference[k], np.float32)).max())
            for k in reference
        )
        if final.keys() == reference.keys()
        else float("inf")
    )
    return {
        "fault": "kill -9 cliplab index",
        "kills": kills,
        "store_opened_after_kill": opened,
        "items_after_each_kill": counts,
        "lost": lost,
        "final_exit": finished.returncode,
        "final_items": len(final),
        "expected_items": photos,
        "equals_clean_run": max_diff < 1e-5,
        "max_vector_diff": max_diff,
    }


def kill_training(work: Path, kills: int = 20, steps: int = 80, seed: int = 0, max_delay_s: float = 6.0) -> dict:
    """Kill ``cliplab train --resume`` with SIGKILL ``kills`` times, then let it finish: the loss curve
    and the final weights must equal an uninterrupted run's bit for bit."""
    import torch

    from cliplab.checkpoints import read_checkpoint

    rng = random.Random(seed)
    csv = make_shapes_dataset(work / "shapes")
    config = write_config(work, csv, steps=steps, checkpoint_every=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = work / "straight"
    subprocess.run(
        _cliplab("train", str(config), "--out", str(straight)), env=env, check=True, capture_output=True, timeout=900
    )
    run = work / "killed"
    command = _cliplab("train", str(config), "--out", str(run), "--resume")
    progress = []
    for _ in range(kills):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = progress[-1] if progress else 0
        _kill_at_a_random_moment(process, rng, max_delay_s, lambda: _last_step(run) > last)
        progress.append(_last_step(run))
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    a = read_checkpoint(straight / "model").state_dict
    b = read_checkpoint(run / "model").state_dict
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same_curve = losses(run) == losses(straight)
    return {
        "fault": "kill -9 cliplab train --resume",
        "kills": kills,
        "last_step_after_each_kill": progress,
        "final_exit": finished.returncode,
        "same_loss_curve": same_curve,
        "same_final_weights": same_weights,
        "lost": 0 if (same_weights and same_curve) else 1,
    }


def full_disk(model: str, work: Path, size_mb: int = 3) -> dict:
    """Index into a store on a tiny filesystem (tmpfs, needs root): the run must fail with a clear
    'no space' error, and the store must still open with every item committed before."""

    mount = work / "tiny-fs"
    mount.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        return {"fault": "full disk", "skipped": f"cannot mount a tmpfs: {mounted.stderr.strip()}"}
    try:
        store = mount / "store"
        small = work / "few"
        write_images(small, 12, size=(40, 40), seed=3)
        first = subprocess.run(
            _cliplab("index", str(small), "--store", str(store), "--model", model, "--workers", "0"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        before = _store_snapshot(store)
        many = work / "many"
        write_images(many, 4000, size=(40, 40), seed=4)
        full = subprocess.run(
            _cliplab(
                "index", str(many), "--store", str(store), "--model", model, "--workers", "0", "--batch-size", "256"
            ),
            capture_output=True,
            text=True,
            timeout=600,
        )
        try:
            after = _store_snapshot(store)
            opens = True
        except (sqlite3.DatabaseError, AssertionError, OSError):
            after, opens = {}, False
        lost = sum(1 for key, vector in before.items() if after.get(key) != vector)
        message = next(
            (line for line in reversed(full.stderr.splitlines()) if "error" in line.lower()), full.stderr.strip()[-300:]
        )
        return {
            "fault": "full disk",
            "first_run_exit": first.returncode,
            "full_run_exit": full.returncode,
            "message": message,
            "clear_message": "No space left" in message
            or "disk is full" in message
            or "database or disk is full" in message,
            "store_opens": opens,
            "items_before": len(before),
            "items_after": len(after),
            "lost": lost,
        }
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def two_writers(model: str, work: Path) -> dict:
    """Start two indexers on one store: the second must be refused with a clear message (or wait with
    --wait), and the store must end complete."""
    folder = work / "two-writers"
    write_images(folder, 300, size=(56, 48), seed=5)
    store = work / "two-store"
    base = _cliplab(
        "index", str(folder), "--store", str(store), "--model", model, "--batch-size", "8", "--workers", "0"
    )
    first = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (store / "store.sqlite").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(base, capture_output=True, text=True, timeout=300)
    waiting = subprocess.run(base + ["--wait"], capture_output=True, text=True, timeout=600)
    first.wait(timeout=600)
    final = _store_snapshot(store)
    return {
        "fault": "two indexers on one store",
        "second_exit": second.returncode,
        "second_message": (second.stderr.strip().splitlines() or [""])[-1],
        "refused_clearly": second.returncode == 1 and "is being updated by" in second.stderr,
        "waiting_exit": waiting.returncode,
        "final_items": len(final),
        "expected_items": 300,
        "lost": 300 - len(final),
    }
