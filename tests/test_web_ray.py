"""Extraction and download on a local two-node Ray cluster (token authentication, as the indexing test
starts one): the shards and the table equal those of the single-machine run, the stats are merged."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from web_site import Resource, WebSite, photo_jpeg

from cliplab.data.web.download import DownloadSettings, download
from cliplab.data.web.extract import extract

pytest.importorskip("ray")
pytest.importorskip("aiohttp")


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.slow
def test_extract_and_download_on_a_two_node_cluster_equal_the_local_run(tmp_path, two_node_cluster):
    address, env = two_node_cluster
    photos = [photo_jpeg(700 + 40 * i, 500 + 30 * i, seed=400 + i) for i in range(6)]
    with WebSite(["127.0.0.1", "127.0.0.2"]) as site:
        pages = tmp_path / "pages"
        pages.mkdir()
        for p in range(4):  # four saved pages, each pointing at images on the test site
            imgs = "".join(
                f'<img src="{site.url(f"127.0.0.{1 + (i % 2)}", f"/p{p}/{i}.jpg")}" alt="picture {i} of page {p} in the garden">'
                for i in range(6)
            )
            logo = f"<img src='{site.url('127.0.0.1', '/logo.jpg')}' alt='image'>"  # boilerplate alt text
            (pages / f"page{p}.html").write_text(
                f"<html><body>{imgs}{logo}<img src='/x.jpg' alt='relative'></body></html>"
            )
            for i in range(6):
                site.add(f"127.0.0.{1 + (i % 2)}", f"/p{p}/{i}.jpg", Resource(body=photos[(i + p) % 6]))
        site.add("127.0.0.2", "/p0/5.jpg", Resource(404, b"", "text/plain"))

        base = [sys.executable, "-m", "cliplab", "data"]
        on_ray = ["--ray", address, "--json"]
        done = subprocess.run(
            base + ["extract", str(pages), str(tmp_path / "ray.parquet"), *on_ray],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        extracted = json.loads(done.stdout)
        local = extract([pages], tmp_path / "local.parquet", progress=False)
        assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
        assert extracted["rows"] == local.rows == 24 and extracted["caption_rules"]["boilerplate"] == 4
        assert extracted["skipped"] == {"unresolved": 4} == local.skipped  # relative, and no page URL

        urls = pq.read_table(tmp_path / "local.parquet")
        pq.write_table(pa.table({"url": urls["url"], "caption": urls["caption"]}), tmp_path / "urls.parquet")
        done = subprocess.run(
            base + ["download", str(tmp_path / "urls.parquet"), "ray-shards", "--shard-size", "5", *on_ray],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        assert report["statuses"] == {"ok": 23, "4xx": 1} and report["shards_written"] == 5
        assert report["urls_this_run"] == 24 and report["requests"] == 24
        local_report = download(
            tmp_path / "urls.parquet", tmp_path / "local-shards", DownloadSettings(shard_size=5), progress=False
        )
        assert local_report.statuses == report["statuses"]
        assert _tars(tmp_path / "ray-shards") == _tars(tmp_path / "local-shards")  # written by the workers
        for shard in (tmp_path / "ray-shards").glob("*.tar"):
            with tarfile.open(shard) as tf:
                assert tf.getnames()
        merged = json.loads((tmp_path / "ray-shards" / "stats.json").read_text())
        assert merged["statuses"] == report["statuses"]
