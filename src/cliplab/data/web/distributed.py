"""Extraction and download on a Ray cluster (as ``cliplab index --ray`` indexes on one).

* :func:`download_with_ray`: the driver reads the URL list and writes the manifest; the shards are
  dealt round-robin to Ray tasks (one per cluster CPU by default), each running the same downloader
  as a single machine on its shards and writing them, with their journals, straight to ``out``, which
  must be storage that every node shares. A task's results never pass through the driver; the driver
  merges the tasks' counts and the shards' stats files into the run's summary. Killed tasks or a
  killed driver lose nothing written: the same command continues.
* :func:`extract_with_ray`: one task per input file; the rows come back to the driver, which drops
  duplicates, detects languages and applies the table-wide caption rules once over all of them.

``per_host`` is divided among the tasks (at least 1 each), so the cluster as a whole keeps to it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .download import (
    DownloadPlan,
    DownloadReport,
    DownloadSettings,
    OutputLock,
    download_shards,
    finish_report,
    plan_download,
)
from .extract import ExtractReport, ExtractSettings, check_output, extract_file, finish_rows, input_files, write_rows

__all__ = ["download_with_ray", "extract_with_ray"]


def _start(address: str) -> tuple[Any, bool]:
    import ray

    from ...index.distributed import _connect

    started = not ray.is_initialized()
    if started:
        _connect(ray, address)
    return ray, started


def _task_count(ray: Any, tasks: int, work: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(work, tasks or cpus))


def _download_task(
    out: str, table: Any, settings: DownloadSettings, shards: int, shard_ids: list[int], retry: list[str]
) -> DownloadReport:
    plan = DownloadPlan(Path(out), table, settings, shards)
    return download_shards(plan, shard_ids, retry, progress=False)


def download_with_ray(
    url_list: str | os.PathLike,
    out: str | os.PathLike,
    settings: DownloadSettings | None = None,
    *,
    address: str = "auto",
    tasks: int = 0,
    retry_failed: Iterable[str] = (),
    overwrite: bool = False,
    progress: bool = True,
) -> DownloadReport:
    """:func:`cliplab.data.web.download.download` with the shards spread over a Ray cluster."""
    settings = settings or DownloadSettings()
    out_path = Path(os.fspath(out)).expanduser().resolve()  # the workers run in other folders
    out_path.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out_path)
    plan = plan_download(url_list, out_path, settings, overwrite=overwrite)
    ray, started = _start(address)
    try:
        count = _task_count(ray, tasks, plan.shards)
        per_task = dataclasses.replace(
            settings,
            threads=settings.threads or 1,
            fetch=dataclasses.replace(settings.fetch, per_host=max(1, settings.fetch.per_host // count)),
        )
        remote = ray.remote(num_cpus=1, max_retries=2)(_download_task)
        table_ref = ray.put(plan.table)
        shard_ids = list(range(plan.shards))
        began = time.perf_counter()
        pending = [
            remote.remote(str(out_path), table_ref, per_task, plan.shards, shard_ids[i::count], list(retry_failed))
            for i in range(count)
        ]
        report = DownloadReport(out=str(out_path), urls=plan.table.num_rows, shards=plan.shards)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=count, unit="task", desc="downloading on Ray")
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for part in ray.get(done):
                    report.merge(part)
                    report.shards_done_before += part.shards_done_before
                if bar is not None:
                    bar.update(len(done))
        finally:
            if bar is not None:
                bar.close()
        report.seconds = time.perf_counter() - began
    finally:
        if started:
            ray.shutdown()
        lock.release()
    return finish_report(plan, report)


def _extract_task(path: str, settings: ExtractSettings) -> tuple[list[dict[str, Any]], ExtractReport]:
    return extract_file(path, settings)


def extract_with_ray(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    settings: ExtractSettings | None = None,
    *,
    address: str = "auto",
    tasks: int = 0,
    overwrite: bool = False,
) -> ExtractReport:
    """:func:`cliplab.data.web.extract.extract` with one Ray task per input file."""
    settings = settings or ExtractSettings()
    path = check_output(out, overwrite)
    files = [str(f.resolve()) for f in input_files(inputs)]
    began = time.perf_counter()
    ray, started = _start(address)
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(_extract_task)
        parts = ray.get([remote.remote(f, settings) for f in files])
    finally:
        if started:
            ray.shutdown()
    report = ExtractReport(out=str(path))
    rows: list[dict[str, Any]] = []
    for file_rows, file_report in parts:  # in input order, as the local run
        rows.extend(file_rows)
        report.add(file_report)
    write_rows(path, finish_rows(rows, settings, report))
    report.seconds = round(time.perf_counter() - began, 3)
    return report
