"""``cliplab data download``: a URL list into WebDataset shards, crash-safe at URL granularity.

One process runs an asyncio event loop for the network (:class:`~.fetch.Fetcher`) and a thread pool
for the CPU work (:func:`~.resize.process_image`: Pillow releases the GIL while it decodes, resizes
and encodes). Results go to each shard's journal as they arrive and shards are written when complete
(:mod:`.writer`); the run's summary goes to ``OUT/stats.json``.

The output folder ``OUT`` holds ``manifest.json`` (the URL list's fingerprint and the settings that
decide the shards' contents: a run only resumes with the same ones), the shards with their Parquet and
stats files, and the journals of unfinished shards. Running the same command again continues where
the last run stopped; ``retry_failed`` (``--retry-failed timeout,5xx``) requests again the URLs of
finished shards that failed with those classes and rewrites their shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._version import __version__
from .fetch import FAILURE_CLASSES, TRANSIENT, FetchCounters, Fetcher, FetchSettings
from .resize import ImageRejected, ResizeSettings, process_image
from .tables import file_fingerprint, read_url_table
from .writer import (
    RESULT_COLUMNS,
    ShardFiles,
    ShardJournal,
    finalize_shard,
    iter_tar_images,
    read_shard_results,
    write_manifest,
)

__all__ = ["DownloadReport", "DownloadSettings", "download", "download_shards", "plan_download"]


@dataclass(frozen=True)
class DownloadSettings:
    """Everything ``cliplab data download`` can be told (see :class:`FetchSettings` and
    :class:`ResizeSettings` for the two halves)."""

    fetch: FetchSettings = field(default_factory=FetchSettings)
    resize: ResizeSettings = field(default_factory=ResizeSettings)
    shard_size: int = 10_000
    threads: int = 0  # image threads; 0: one per usable core
    url_column: str | None = None
    caption_column: str | None = None
    sync_seconds: float = 30.0  # fsync the open journals this often (a kill -9 loses nothing anyway)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    def shard_identity(self) -> dict[str, Any]:
        """What decides a shard's contents: a resumed run must have the same."""
        return {"shard_size": self.shard_size, "resize": dataclasses.asdict(self.resize)}


@dataclass
class DownloadReport:
    """What a download run did (``--json`` prints :meth:`to_dict`)."""

    out: str
    urls: int = 0  # rows of the URL list
    shards: int = 0
    shards_written: int = 0  # shards finished by this run
    shards_done_before: int = 0
    urls_this_run: int = 0  # URLs fetched by this run
    statuses: dict[str, int] = field(default_factory=dict)  # every URL's final status, whole output
    statuses_this_run: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # sent by this run (image URLs, redirects and retries; robots.txt apart)
    robots_requests: int = 0
    retries: int = 0
    bytes_downloaded: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get("ok", 0)

    @property
    def ok_this_run(self) -> int:
        return self.statuses_this_run.get("ok", 0)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        data["success_rate"] = round(self.ok / self.urls, 4) if self.urls else 0.0
        data["urls_per_second"] = round(self.urls_this_run / self.seconds, 2) if self.seconds else 0.0
        data["images_per_second"] = round(self.ok_this_run / self.seconds, 2) if self.seconds else 0.0
        data["megabytes_per_second"] = round(self.bytes_downloaded / 1e6 / self.seconds, 3) if self.seconds else 0.0
        return data

    def merge(self, other: DownloadReport) -> None:
        """Add another worker's counts (its shards are disjoint from ours)."""
        for name in ("shards_written", "urls_this_run", "requests", "robots_requests", "retries", "bytes_downloaded"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cpu_seconds += other.cpu_seconds
        for status, n in other.statuses_this_run.items():
            self.statuses_this_run[status] = self.statuses_this_run.get(status, 0) + n


# --------------------------------------------------------------------------- the plan


@dataclass
class DownloadPlan:
    out: Path
    table: Any  # pyarrow.Table with url, caption and the carried columns
    settings: DownloadSettings
    shards: int

    def rows(self, shard: int) -> list[dict[str, Any]]:
        size = self.settings.shard_size
        return self.table.slice(shard * size, size).to_pylist()


def _parse_retry_classes(classes: Iterable[str]) -> frozenset[str]:
    chosen = {c.strip() for c in classes if c.strip()}
    if "transient" in chosen:
        chosen = (chosen - {"transient"}) | set(TRANSIENT)
    unknown = chosen - set(FAILURE_CLASSES)
    if unknown:
        raise ValueError(
            f"unknown failure classes {sorted(unknown)} for --retry-failed; known: transient, {', '.join(FAILURE_CLASSES)}"
        )
    return frozenset(chosen)


def plan_download(
    url_list: str | os.PathLike, out: str | os.PathLike, settings: DownloadSettings, overwrite: bool = False
) -> DownloadPlan:
    """Read the URL list, check ``out`` against it (or start it) and write ``out/manifest.json``."""
    out = Path(os.fspath(out)).expanduser()
    table = read_url_table(
        url_list, settings.url_column, settings.caption_column, reserved=(*RESULT_COLUMNS, "ext", "row")
    )
    fingerprint = file_fingerprint(url_list)
    manifest_path = out / "manifest.json"
    manifest = {
        "cliplab": __version__,
        "url_list": str(Path(os.fspath(url_list)).resolve()),
        "url_list_sha256": fingerprint,
        "urls": table.num_rows,
        **settings.shard_identity(),
    }
    if manifest_path.exists() and not overwrite:
        previous = json.loads(manifest_path.read_text())
        for name in ("url_list_sha256", "shard_size", "resize"):
            if previous.get(name) != manifest[name]:
                what = "the URL list" if name == "url_list_sha256" else name
                raise ValueError(
                    f"{out} holds a download of a different {what} ({previous.get(name)!r} there, "
                    f"{manifest[name]!r} now): pass the same URL list and settings to resume, another OUT, "
                    "or --overwrite to start again"
                )
    elif (
        out.exists() and any(p.name != ".lock" for p in out.iterdir()) and not overwrite and not manifest_path.exists()
    ):
        raise FileExistsError(f"{out} is not empty and holds no cliplab download; pick an empty folder")
    if overwrite and out.exists():
        for child in out.iterdir():
            if child.name.startswith(("shard-", ".shard-")) or child.name in ("manifest.json", "stats.json"):
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest_path, manifest)
    remove_stale_temporaries(out)
    shards = -(-table.num_rows // settings.shard_size)
    return DownloadPlan(out, table, settings, shards)


def remove_stale_temporaries(out: Path) -> None:
    """Remove the hidden temporary files that a killed run left beside its shards (never visible as
    shards: their names start with a dot and do not end in .tar/.parquet)."""
    for tmp in out.glob(".shard-*"):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


class OutputLock:
    """Only one download (driver) writes an output folder at a time."""

    def __init__(self, out: Path) -> None:
        import fcntl

        self._handle = open(out / ".lock", "a")
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise FileExistsError(f"another download is writing {out}; wait for it to finish or stop it") from None

    def release(self) -> None:
        self._handle.close()


# --------------------------------------------------------------------------- running shards


class _Progress:
    """A tqdm bar over URLs with the success rate and MB/s in its postfix."""

    def __init__(self, total: int, enabled: bool, counters: FetchCounters) -> None:
        self.counters = counters
        self.ok = 0
        self.done = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="URL", desc="downloading", dynamic_ncols=True, smoothing=0.1)

    def update(self, ok: bool) -> None:
        self.done += 1
        self.ok += ok
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last > 0.5:
            self._last = now
            elapsed = max(1e-9, now - self.started)
            self.bar.set_postfix_str(
                f"ok {100 * self.ok / self.done:.1f}%, {self.counters.bytes / 1e6 / elapsed:.1f} MB/s", refresh=False
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _ShardRun:
    """One shard in progress: its rows, what is still to fetch, its journal."""

    def __init__(self, plan: DownloadPlan, index: int, retry: frozenset[str]) -> None:
        self.files = ShardFiles(plan.out, index)
        self.first = index * plan.settings.shard_size
        self.rows = plan.rows(index)
        self.previous: dict[int, dict[str, Any]] = {}
        if self.files.parquet.exists() and self.files.tar.exists():  # a shard whose tar was deleted is redone
            for result in read_shard_results(self.files):
                self.previous[int(result["key"])] = result
        self.journal = ShardJournal(self.files.journal)
        self.resolved = {row for row in self.previous if self.previous[row]["status"] not in retry}
        self.resolved.update(self.journal.entries)
        self.pending = [self.first + i for i in range(len(self.rows)) if self.first + i not in self.resolved]
        self.outstanding = len(self.pending)
        self.changed = bool(self.journal.entries) or not self.files.done()

    def row(self, number: int) -> dict[str, Any]:
        return self.rows[number - self.first]

    def finalize(self) -> dict[str, Any]:
        results: dict[int, dict[str, Any]] = dict(self.previous)
        for number, (meta, _, _) in self.journal.entries.items():
            results[number] = meta
        old_images: dict[str, tuple[str, bytes]] = {}
        if self.files.tar.exists() and any(
            r.get("status") == "ok" and n not in self.journal.entries for n, r in self.previous.items()
        ):
            old_images = {key: (ext, data) for key, ext, data in iter_tar_images(self.files.tar)}
        images: dict[int, tuple[str, Callable[[], bytes]]] = {}
        for number, result in results.items():
            if result.get("status") != "ok":
                continue
            if number in self.journal.entries:
                images[number] = (result["ext"], functools.partial(self.journal.image, number))
            else:
                ext, data = old_images[result["key"]]
                images[number] = (ext, functools.partial(bytes, data))
        self.journal.sync()
        stats = finalize_shard(self.files, self.rows, results, images, self.first)
        self.journal.remove()
        return stats


def _rows_in(plan: DownloadPlan, index: int) -> int:
    size = plan.settings.shard_size
    return max(0, min(size, plan.table.num_rows - index * size))


def _result_meta(outcome: Any, processed: Any, status: str, error: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "status": status,
        "error": error,
        "http_status": outcome.http_status,
        "final_url": outcome.final_url,
        "attempts": outcome.attempts,
        "original_bytes": len(outcome.body) if outcome.body is not None else None,
    }
    if processed is not None:
        meta.update(
            width=processed.width,
            height=processed.height,
            original_width=processed.original_width,
            original_height=processed.original_height,
            original_format=processed.original_format,
            sha256=processed.sha256,
            ext=processed.ext,
        )
    return meta


async def _run_shards(
    plan: DownloadPlan,
    shard_ids: Sequence[int],
    retry: frozenset[str],
    progress: bool,
    report: DownloadReport,
) -> None:
    settings = plan.settings
    threads = settings.threads or max(1, len(os.sched_getaffinity(0)))
    loop = asyncio.get_running_loop()
    runs = []
    for index in shard_ids:
        files = ShardFiles(plan.out, index)
        if files.done() and not files.journal.exists() and not retry:
            report.shards_done_before += 1
            continue
        runs.append(index)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="cliplab-image")
    async with Fetcher(settings.fetch) as fetcher:
        bar = _Progress(0, progress, fetcher.counters)
        # The number of URLs in flight (fetching or being processed), so memory stays bounded.
        window = asyncio.Semaphore(settings.fetch.concurrency + 4 * threads)
        finalizing: list[asyncio.Future[Any]] = []
        tasks: set[asyncio.Task[None]] = set()
        last_sync = time.monotonic()
        open_runs: list[_ShardRun] = []

        async def handle(run: _ShardRun, number: int) -> None:
            try:
                row = run.row(number)
                outcome = await fetcher.fetch(str(row["url"]))
                processed, status, error = None, outcome.status, outcome.error
                if outcome.status == "ok" and outcome.body is not None:
                    try:
                        processed = await loop.run_in_executor(pool, process_image, outcome.body, settings.resize)
                    except ImageRejected as exc:
                        status, error = exc.status, str(exc)
                    except Exception as exc:  # an unexpected decoder failure stays one URL's failure
                        status, error = "error", f"{type(exc).__name__}: {exc}"
                run.journal.append(
                    number, _result_meta(outcome, processed, status, error), processed.data if processed else None
                )
                report.urls_this_run += 1
                report.statuses_this_run[status] = report.statuses_this_run.get(status, 0) + 1
                bar.update(status == "ok")
                run.outstanding -= 1
                if run.outstanding == 0:
                    finalizing.append(loop.run_in_executor(pool, run.finalize))
                    open_runs.remove(run)
            finally:
                window.release()

        try:
            if bar.bar is not None:
                bar.bar.total = sum(_rows_in(plan, index) for index in runs)
            for index in runs:
                run = _ShardRun(plan, index, retry)
                if bar.bar is not None:
                    bar.bar.total -= _rows_in(plan, index) - len(run.pending)
                    bar.bar.refresh()
                if not run.pending:
                    if run.changed:
                        finalizing.append(loop.run_in_executor(pool, run.finalize))
                    else:
                        run.journal.remove()
                    continue
                open_runs.append(run)
                for number in run.pending:
                    await window.acquire()
                    task = asyncio.create_task(handle(run, number))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if time.monotonic() - last_sync > settings.sync_seconds:
                        last_sync = time.monotonic()
                        for open_run in open_runs:
                            open_run.journal.sync()
            while tasks:
                await asyncio.gather(*list(tasks))
            for stats in await asyncio.gather(*finalizing):
                report.shards_written += 1
                del stats
        finally:
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(tasks), return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.gather(*finalizing, return_exceptions=True)
            for run in open_runs:
                run.journal.close()
            bar.close()
            pool.shutdown(wait=True)
            counters = fetcher.counters
            report.requests += counters.requests
            report.robots_requests += counters.robots_requests
            report.retries += counters.retries
            report.bytes_downloaded += counters.bytes


def download_shards(
    plan: DownloadPlan,
    shard_ids: Sequence[int],
    retry_failed: Iterable[str] = (),
    progress: bool = False,
) -> DownloadReport:
    """Download the given shards of a plan in this process (a Ray worker calls this too)."""
    report = DownloadReport(out=str(plan.out), urls=plan.table.num_rows, shards=plan.shards)
    cpu = time.process_time()
    started = time.perf_counter()
    asyncio.run(_run_shards(plan, shard_ids, _parse_retry_classes(retry_failed), progress, report))
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu
    return report


def collect_statuses(out: Path, shards: int) -> dict[str, int]:
    """Every URL's final status over the finished shards (their stats files)."""
    counts: dict[str, int] = {}
    for index in range(shards):
        files = ShardFiles(out, index)
        if not files.stats.exists() or not files.parquet.exists():
            continue
        for status, n in json.loads(files.stats.read_text())["statuses"].items():
            counts[status] = counts.get(status, 0) + n
    return counts


def finish_report(plan: DownloadPlan, report: DownloadReport) -> DownloadReport:
    """Fill in the whole output's statuses and write ``OUT/stats.json``."""
    report.statuses = dict(sorted(collect_statuses(plan.out, plan.shards).items(), key=lambda kv: (-kv[1], kv[0])))
    pending = plan.table.num_rows - sum(report.statuses.values())
    if pending:
        report.statuses["pending"] = pending
    from ...files import atomic_write_text

    atomic_write_text(plan.out / "stats.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def download(
    url_list: str | os.PathLike,
    out: str | os.PathLike,
    settings: DownloadSettings | None = None,
    *,
    retry_failed: Iterable[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> DownloadReport:
    """Download every image of ``url_list`` into WebDataset shards in ``out``.

    Args:
        url_list: a CSV/TSV/JSONL/Parquet table with a URL column and a caption column; its other
            columns are carried into the metadata.
        out: the output folder; a folder holding an earlier run of the same list is resumed.
        settings: limits, politeness, resizing and shard size (:class:`DownloadSettings`).
        retry_failed: failure classes (``timeout``, ``5xx``, ...; ``transient`` for all four transient
            ones) whose URLs are requested again, in finished shards too.
        overwrite: remove an earlier download in ``out`` first.
        progress: show the progress bar (URLs/s, success rate, MB/s).
    """
    settings = settings or DownloadSettings()
    out_path = Path(os.fspath(out)).expanduser()
    out_path.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out_path)
    try:
        plan = plan_download(url_list, out_path, settings, overwrite=overwrite)
        report = download_shards(plan, range(plan.shards), retry_failed, progress)
        return finish_report(plan, report)
    finally:
        lock.release()


def summary_table(report: DownloadReport) -> str:
    """The human summary: one line per status, then the totals."""
    data = report.to_dict()
    lines = [f"{'status':<20} {'URLs':>9} {'share':>7}  meaning"]
    total = max(1, report.urls)
    for status, n in report.statuses.items():
        meaning = "stored in a shard" if status == "ok" else FAILURE_CLASSES.get(status, "not fetched yet")
        lines.append(f"{status:<20} {n:>9} {100 * n / total:>6.1f}%  {meaning}")
    lines.append(
        f"{report.urls} URLs in {report.shards} shards ({report.shards_written} written now, "
        f"{report.shards_done_before} done before) in {report.out}"
    )
    lines.append(
        f"this run: {report.urls_this_run} URLs in {report.seconds:.1f} s ({data['urls_per_second']} URLs/s, "
        f"{data['images_per_second']} images/s, {data['megabytes_per_second']} MB/s); "
        f"{report.requests} requests ({report.retries} retries) + {report.robots_requests} robots.txt"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a convenience for profiling
    print(summary_table(download(sys.argv[1], sys.argv[2])))
