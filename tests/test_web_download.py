"""`cliplab data download` against a real HTTP server on loopback addresses (127.0.0.0/8 only).

The test site serves photo-like JPEGs of 500-2,000 px and every failure the issue lists; each class's
outcome, the requests per URL (no retry of a permanent failure) and the connections per host (limits
honoured) are asserted. A kill -9 test interrupts the command at random moments and checks that every
good image ends in exactly one shard, and that the shards train.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from web_site import Resource, WebSite, photo_jpeg

from cliplab.data.web.download import DownloadSettings, download, summary_table
from cliplab.data.web.fetch import FetchSettings
from cliplab.data.web.resize import ResizeSettings

pytest.importorskip("aiohttp")

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
SIZES = [(1600, 1200), (2000, 1333), (500, 750), (1024, 768), (800, 800), (1920, 1080), (640, 480), (1200, 1600)]


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [photo_jpeg(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]


def _png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid small PNG whose header declares a huge size (Pillow refuses it before decoding)."""
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = bytearray(data[12:29])  # type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _table(path: Path, urls: list[str], captions: list[str] | None = None) -> Path:
    captions = captions or [f"a photo of thing number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "caption": captions, "source_id": list(range(len(urls)))}), path)
    return path


def _results(out: Path) -> dict[str, dict]:
    rows = {}
    for part in sorted(out.glob("shard-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            rows[row["url"]] = row
    return rows


def _tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for member in tf:
                key, _, ext = member.name.partition(".")
                assert ext not in samples.get(key, {}), f"{member.name} twice"
                samples.setdefault(key, {})[ext] = tf.extractfile(member).read()
    return samples


FAST = FetchSettings(
    concurrency=8,
    per_host=3,
    connect_timeout=2,
    read_timeout=1.0,
    total_timeout=2.0,
    retries=2,
    backoff=0.05,
    max_bytes=2 * 1024 * 1024,
    max_retry_after=5,
)


def test_every_failure_class_has_its_exact_outcome_and_request_count(tmp_path, photos):
    with WebSite(HOSTS, latency=0.02) as site:
        a, b, c = HOSTS
        expect: dict[str, tuple[str, int | None]] = {}  # url -> (status, requests to that URL)

        def add(host, path, status, count, *resources):
            url = site.add(host, path, *resources)
            expect[url] = (status, count)
            return url

        good = [add(a, f"/photos/{i}.jpg", "ok", 1, Resource(body=photo)) for i, photo in enumerate(photos * 3)]
        rotated = photo_jpeg(1200, 800, seed=99, exif_orientation=6)
        add(a, "/rotated.jpg", "ok", 1, Resource(body=rotated))
        add(a, "/missing.jpg", "4xx", 1, Resource(404, b"gone", "text/plain"))
        add(a, "/forbidden.jpg", "4xx", 1, Resource(403, b"no", "text/plain"))
        add(a, "/error.jpg", "5xx", 3, Resource(500, b"boom", "text/plain"))  # 1 + 2 retries
        add(a, "/flaky.jpg", "ok", 2, Resource(502, b"", "text/plain"), Resource(body=photos[0]))
        busy = add(
            a, "/busy.jpg", "ok", 2, Resource(429, b"", "text/plain", {"Retry-After": "1"}), Resource(body=photos[1])
        )
        add(
            c,
            "/maintenance.jpg",
            "ok",
            2,
            Resource(503, b"", "text/plain", {"Retry-After": "1"}),
            Resource(body=photos[2]),
        )
        add(a, "/trickle.jpg", "timeout", 3, Resource(body=photos[3][:4000], trickle=(100, 0.2)))
        add(a, "/cut.jpg", "reset", 3, Resource(body=photos[4], cut_after=1000))
        add(a, "/declared-huge.jpg", "too_large", 1, Resource(body=os.urandom(3 * 1024 * 1024)))
        add(
            a,
            "/streamed-huge.jpg",
            "too_large",
            1,
            Resource(body=b"\xff\xd8\xff" + os.urandom(3 * 1024 * 1024), chunked=True),
        )
        add(a, "/gzip-bomb.jpg", "too_large", 1, Resource(body=b"\xff\xd8\xff" + bytes(60 * 1024 * 1024), gzip=True))
        gzipped = add(a, "/gzipped.jpg", "ok", 1, Resource(body=photos[5], gzip=True))
        add(a, "/jpeg-as-text.txt", "ok", 1, Resource(body=photos[6], content_type="text/plain"))
        add(a, "/text-as-jpeg.jpg", "not_image", 1, Resource(body=b"hello, this is not a picture"))
        add(a, "/page.jpg", "not_image", 1, Resource(body=b"<!DOCTYPE html><html><body>Not found</body></html>"))
        add(
            a,
            "/page-noai.jpg",
            "opt_out",
            1,
            Resource(body=b'<html><head><meta name="robots" content="noai"></head></html>'),
        )
        add(a, "/noai.jpg", "opt_out", 1, Resource(body=photos[0], headers={"X-Robots-Tag": "noai"}))
        add(
            a,
            "/scoped-ours.jpg",
            "opt_out",
            1,
            Resource(
                body=photos[0],
                extra_headers=[("X-Robots-Tag", "otherbot: noindex"), ("X-Robots-Tag", "cliplab: noimageai")],
            ),
        )
        add(
            a,
            "/scoped-other.jpg",
            "ok",
            1,
            Resource(body=photos[0], headers={"X-Robots-Tag": "otherbot: noai, noimageai"}),
        )
        add(a, "/truncated.jpg", "decode", 1, Resource(body=photos[0][: len(photos[0]) // 3]))
        add(a, "/bomb.png", "bomb", 1, Resource(body=_png_bomb(), content_type="image/png"))
        add(a, "/loop/a", "redirects", 1, Resource(302, b"", None, {"Location": "/loop/b"}))
        site.add(a, "/loop/b", Resource(302, b"", None, {"Location": "/loop/a"}))
        for i in range(7):
            add(a, f"/chain/{i}", "redirects", 1, Resource(301, b"", None, {"Location": f"/chain/{i + 1}"}))
        for i in range(1, 7):
            expect.pop(site.url(a, f"/chain/{i}"))
        cross = add(
            a, "/cross.jpg", "ok", 1, Resource(302, b"", None, {"Location": site.url(b, "/elsewhere/photo.jpg")})
        )
        site.add(b, "/elsewhere/photo.jpg", Resource(body=photos[7]))
        add(a, "/cross-private.jpg", "robots", 1, Resource(302, b"", None, {"Location": site.url(b, "/private/p.jpg")}))
        site.add(b, "/private/p.jpg", Resource(body=photos[7]))
        add(b, "/private/direct.jpg", "robots", 0, Resource(body=photos[7]))
        site.add(b, "/robots.txt", Resource(body=b"User-agent: *\nDisallow: /private/\n", content_type="text/plain"))
        site.add(
            c,
            "/robots.txt",
            Resource(
                body=b"User-agent: *\nAllow: /\n\nUser-agent: cliplab\nDisallow: /no-cliplab/\n",
                content_type="text/plain",
            ),
        )
        add(c, "/no-cliplab/x.jpg", "robots", 0, Resource(body=photos[0]))
        add(c, "/fine/x.jpg", "ok", 1, Resource(body=photos[0]))
        add(a, "/to-ftp.jpg", "invalid_url", 1, Resource(302, b"", None, {"Location": "ftp://127.0.0.1/x.jpg"}))
        refused = f"http://127.0.0.9:{site.port}/nobody-listens.jpg"
        expect[refused] = ("connect", None)
        for bad in (
            "not a url",
            "ftp://127.0.0.1/x.jpg",
            "data:image/png;base64,iVBORw0KGgo=",
            "javascript:alert(1)",
            "",
        ):
            expect[bad] = ("invalid_url", None)

        urls = list(expect)
        table = _table(tmp_path / "urls.parquet", urls)
        settings = DownloadSettings(fetch=FAST, resize=ResizeSettings(image_size=256), shard_size=25)
        started = time.monotonic()
        report = download(table, tmp_path / "out", settings, progress=False)
        elapsed = time.monotonic() - started

        results = _results(tmp_path / "out")
        got = {url: (results[url]["status"], site.count(url) if expect[url][1] is not None else None) for url in urls}
        assert got == expect, {u: (got[u], expect[u]) for u in urls if got[u] != expect[u]}
        assert all(site.count(f"/chain/{i}") == 1 for i in range(6))  # 5 redirects followed, the 6th refused
        assert site.count("/chain/6") == 0
        assert (site.count("/loop/b"), site.count(site.url(b, "/private/p.jpg"))) == (1, 0)

        # the limits: at most 3 connections (and requests) open at once per host, reached on the busy one
        for host in HOSTS:
            assert site.max_connections[host] <= FAST.per_host, (host, site.max_connections)
            assert site.max_in_flight[host] <= FAST.per_host
        assert site.max_in_flight[a] == FAST.per_host
        # robots.txt: once per host; the user agent names cliplab and how to opt out
        assert [site.count("/robots.txt", h) for h in HOSTS] == [1, 1, 1]
        assert all("cliplab" in agent and "opt out" in agent for agent in site.user_agents)
        # Retry-After: the second request came at least 1 s after the 429
        first, second = site.times(busy)
        assert second - first >= 0.95
        assert elapsed < 40

        # what was stored
        ok = [u for u in urls if expect[u][0] == "ok"]
        assert report.ok == len(ok) and report.statuses["ok"] == len(ok)
        samples = _tar_samples(tmp_path / "out")
        assert sorted(samples) == sorted(results[u]["key"] for u in ok)
        for url in ok:
            row = results[url]
            sample = samples[row["key"]]
            assert set(sample) == {"jpg", "txt", "json"}
            assert sample["txt"].decode() == row["caption"]
            meta = json.loads(sample["json"])
            assert meta["url"] == url and meta["source_id"] == row["source_id"]  # carried column
            with Image.open(io.BytesIO(sample["jpg"])) as im:
                assert im.format == "JPEG" and min(im.size) == 256 and im.size == (row["width"], row["height"])
                w, h = row["original_width"], row["original_height"]
                assert abs(im.size[0] / im.size[1] - w / h) < 0.01  # the ratio kept
        by_url = {u: results[u] for u in urls}
        assert (
            by_url[site.url(a, "/rotated.jpg")]["original_width"],
            by_url[site.url(a, "/rotated.jpg")]["original_height"],
        ) == (800, 1200)
        assert by_url[gzipped]["sha256"] == hashlib.sha256(photos[5]).hexdigest()  # of the decoded original
        assert by_url[gzipped]["original_bytes"] == len(photos[5])
        assert by_url[cross]["final_url"] == site.url(b, "/elsewhere/photo.jpg")
        assert by_url[good[0]]["sha256"] == hashlib.sha256(photos[0]).hexdigest()
        assert by_url[site.url(a, "/missing.jpg")]["http_status"] == 404
        table_text = summary_table(report)
        assert table_text.splitlines()[1].split()[:2] == ["ok", str(len(ok))]  # the summary's first row
        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        assert stats["statuses"] == report.statuses and stats["urls"] == len(urls)


def test_the_same_input_gives_the_same_shards_whatever_the_concurrency(tmp_path, photos):
    with WebSite(HOSTS[:2], latency=0.01) as site:
        urls = [site.add(HOSTS[i % 2], f"/p/{i}.jpg", Resource(body=photos[i % len(photos)])) for i in range(30)]
        urls += [site.add(HOSTS[0], "/missing.jpg", Resource(404, b"", "text/plain"))]
        table = _table(tmp_path / "urls.parquet", urls)
        outs = []
        for concurrency, per_host, threads in ((1, 1, 1), (32, 8, 4)):
            fetch = FetchSettings(concurrency=concurrency, per_host=per_host)
            settings = DownloadSettings(fetch=fetch, shard_size=8, threads=threads)
            out = tmp_path / f"out-{concurrency}"
            download(table, out, settings, progress=False)
            outs.append(out)
        tars = [sorted(o.glob("*.tar")) for o in outs]
        assert [p.name for p in tars[0]] == [p.name for p in tars[1]] and len(tars[0]) == 4
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(*tars))


def test_resume_and_retry_failed_by_class(tmp_path, photos):
    with WebSite(HOSTS[:1]) as site:
        host = HOSTS[0]
        good = [site.add(host, f"/g/{i}.jpg", Resource(body=photos[i])) for i in range(4)]
        down = site.add(host, "/down.jpg", Resource(500, b"", "text/plain"))
        missing = site.add(host, "/missing.jpg", Resource(404, b"", "text/plain"))
        table = _table(tmp_path / "urls.parquet", good + [down, missing])
        settings = DownloadSettings(fetch=FetchSettings(retries=1, backoff=0.01), shard_size=4)
        first = download(table, tmp_path / "out", settings, progress=False)
        assert first.statuses == {"ok": 4, "5xx": 1, "4xx": 1}
        assert (site.count(down), site.count(missing)) == (2, 1)

        again = download(table, tmp_path / "out", settings, progress=False)  # nothing left to do
        assert (again.urls_this_run, again.shards_done_before, again.requests) == (0, 2, 0)

        site.add(host, "/down.jpg", Resource(body=photos[5]))  # the server is back
        before = (tmp_path / "out" / "shard-000000.tar").read_bytes()
        retried = download(table, tmp_path / "out", settings, retry_failed=["5xx"], progress=False)
        assert retried.urls_this_run == 1 and retried.statuses == {"ok": 5, "4xx": 1}
        assert (site.count(down), site.count(missing)) == (3, 1)  # the 404 is never asked again
        assert (tmp_path / "out" / "shard-000000.tar").read_bytes() == before  # its shard untouched
        keys = sorted(_tar_samples(tmp_path / "out"))
        assert keys == [f"{i:09d}" for i in range(5)]
        assert not list((tmp_path / "out").glob("*.journal"))

        with pytest.raises(ValueError, match="different the URL list|different"):
            download(_table(tmp_path / "other.parquet", good), tmp_path / "out", settings, progress=False)
        with pytest.raises(ValueError, match="unknown failure classes"):
            download(table, tmp_path / "out", settings, retry_failed=["404s"], progress=False)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_duplicates_nothing_and_the_shards_train(tmp_path, photos):
    rng = random.Random(7)
    small = [photo_jpeg(w // 2, h // 2, seed=50 + i) for i, (w, h) in enumerate(SIZES)]
    with WebSite(HOSTS[:2], latency=0.03) as site:
        urls, good = [], []
        for i in range(160):
            if i % 10 == 9:
                urls.append(site.add(HOSTS[0], f"/gone/{i}.jpg", Resource(404, b"", "text/plain")))
            else:
                urls.append(site.add(HOSTS[i % 2], f"/img/{i}.jpg", Resource(body=small[i % len(small)])))
                good.append(urls[-1])
        captions = [f"a {['red', 'green', 'blue', 'yellow'][i % 4]} picture number {i}" for i in range(len(urls))]
        table = _table(tmp_path / "urls.parquet", urls, captions)
        out = tmp_path / "shards"
        command = [
            sys.executable, "-m", "cliplab", "data", "download", str(table), str(out),
            "--shard-size", "16", "--concurrency", "6", "--per-host", "3", "--threads", "1",
            "--image-size", "64", "--json",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        kills = mid_shard = 0
        for _ in range(4):
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while not (out / "manifest.json").exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the command has started (imports take a while on a busy machine)
            time.sleep(rng.uniform(0.2, 1.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(60)
            mid_shard += any(j.stat().st_size > 0 for j in out.glob("*.journal"))
            for shard in out.glob("*.tar"):  # every visible shard is complete: no truncated tar
                results_file = shard.with_suffix(".parquet")
                with tarfile.open(shard) as tf:
                    names = tf.getnames()
                if results_file.exists():
                    ok_keys = {r["key"] for r in pq.read_table(results_file).to_pylist() if r["status"] == "ok"}
                    assert {n.partition(".")[0] for n in names} == ok_keys
        assert kills >= 2 and mid_shard >= 1  # some kills landed in the middle of a shard
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        assert report["statuses"] == {"ok": len(good), "4xx": len(urls) - len(good)}

        samples = _tar_samples(out)  # asserts no member appears twice
        results = _results(out)
        assert sorted(samples) == sorted(results[u]["key"] for u in good)  # each good image once, no more
        assert all(results[u]["status"] == "4xx" for u in urls if u not in good)
        assert not list(out.glob("*.journal")) and len(list(out.glob("*.tar"))) == 10

        # the interrupted run stored exactly what an uninterrupted run stores
        straight = tmp_path / "straight"
        fetch = FetchSettings(concurrency=6, per_host=3)
        download(
            table,
            straight,
            DownloadSettings(fetch=fetch, shard_size=16, resize=ResizeSettings(image_size=64)),
            progress=False,
        )
        reference = _tar_samples(straight)
        assert {k: (v["jpg"], v["txt"]) for k, v in samples.items()} == {
            k: (v["jpg"], v["txt"]) for k, v in reference.items()
        }

    config = tmp_path / "train.toml"
    config.write_text(
        '[model]\narch = "ViT-nano"\nimage_size = 32\n[data]\n'
        f'train = [["{out}", 1.0]]\nworkers = 0\nshuffle_buffer = 32\n'
        '[train]\nbatch_size = 8\nsteps = 3\nwarmup_steps = 1\nprecision = "fp32"\ncheckpoint_every = 3\nlog_every = 1\n'
    )
    trained = subprocess.run(
        [sys.executable, "-m", "cliplab", "train", str(config), "--out", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)
