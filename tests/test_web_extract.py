"""Extraction (HTML, WARC, WAT, URL lists), the caption rules and the robots/opt-out parsing."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cliplab.data.captions import CAPTION_RULES, WEB_CAPTION_RULES, CaptionFilter, caption_rule
from cliplab.data.web.extract import ExtractSettings, extract
from cliplab.data.web.robots import RobotsRules, meta_robots_directives, opted_out

PAGE = """<!DOCTYPE html>
<!-- saved from url=(0033)https://example.org/blog/post.html -->
<html><head><base href="https://cdn.example.org/media/"><title>Post</title>{meta}</head>
<body>
<p>Some intro text about our trip.</p>
<img src="a.jpg" alt="A red fox sitting in the snow">
<img src="data:image/gif;base64,R0lGOD" data-src="lazy/b.jpg" alt="Two kayaks on a calm lake">
<img srcset="c-320.jpg 320w, c-1280.jpg 1280w, c-640.jpg 640w" src="c-320.jpg" alt="Sunset over the old harbour">
<figure><img src="/d.jpg"><figcaption>The old lighthouse at dawn</figcaption></figure>
<img src="pixel.gif" width="1" height="1" alt="">
<img src="/static/favicon.png" alt="site icon">
<img src="/icons/arrow.svg" alt="next page arrow">
<img src="javascript:void(0)" alt="nothing here">
<img src="e.jpg" alt="IMG_1234.JPG" title="A mountain trail in autumn">
<img src="f.jpg" alt="click here">
<p>A long walk along the beach <img src="g.jpg"> with the dog in the evening light.</p>
<img src="a.jpg" alt="A red fox sitting in the snow">
<picture><source srcset="h-big.webp 2000w, h-small.webp 500w"><img src="h.jpg" alt="Ein rotes Auto parkt auf der Straße"></picture>
</body></html>
"""

EXPECTED = [
    ("https://cdn.example.org/media/a.jpg", "A red fox sitting in the snow", "alt"),
    ("https://cdn.example.org/media/lazy/b.jpg", "Two kayaks on a calm lake", "alt"),
    ("https://cdn.example.org/media/c-1280.jpg", "Sunset over the old harbour", "alt"),
    ("https://cdn.example.org/d.jpg", "The old lighthouse at dawn", "figcaption"),
    ("https://cdn.example.org/media/e.jpg", "A mountain trail in autumn", "title"),
    ("https://cdn.example.org/media/g.jpg", "A long walk along the beach with the dog in the evening light.", "nearby"),
    ("https://cdn.example.org/media/h-big.webp", "Ein rotes Auto parkt auf der Straße", "alt"),
]


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_html_page_images_captions_sources_and_skips(tmp_path):
    (tmp_path / "page.html").write_text(PAGE.format(meta=""))
    report = extract([tmp_path], tmp_path / "out.parquet", ExtractSettings(nearby_text=True), progress=False)
    rows = _rows(tmp_path / "out.parquet")
    assert [(r["url"], r["caption"], r["caption_source"]) for r in rows] == EXPECTED
    assert {r["page_url"] for r in rows} == {"https://example.org/blog/post.html"}
    assert rows[0]["language"] == "en" and rows[-1]["language"] == "de"
    assert report.skipped == {"tracker": 1, "icon": 2, "not_http": 1}
    assert report.duplicates == 1  # the second a.jpg with the same alt
    assert report.caption_rules["boilerplate"] == 1  # "click here", the only caption of f.jpg
    assert tuple(report.caption_rules) == WEB_CAPTION_RULES and report.rows == 7

    # without nearby text g.jpg has no caption; the language rule removes the German one
    settings = ExtractSettings(caption_filter=CaptionFilter(languages=["en"]))
    report = extract([tmp_path / "page.html"], tmp_path / "en.parquet", settings, progress=False)
    assert [r["url"] for r in _rows(tmp_path / "en.parquet")] == [u for u, _, s in EXPECTED if s != "nearby"][:-1]
    assert report.caption_rules["language"] == 1 and report.skipped["no_caption"] == 1

    with pytest.raises(FileExistsError, match="--overwrite"):
        extract([tmp_path / "page.html"], tmp_path / "en.parquet", settings, progress=False)


def test_pages_that_opt_out_give_no_rows(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for i, meta in enumerate(
        ['<meta name="robots" content="noai, noimageai">', '<meta name="cliplab" content="noimageai">']
    ):
        (pages / f"p{i}.html").write_text(PAGE.format(meta=meta))
    (pages / "other-bot.html").write_text(PAGE.format(meta='<meta name="otherbot" content="noai">'))
    report = extract([pages], tmp_path / "out.parquet", progress=False)
    assert (report.pages, report.pages_opted_out) == (3, 2)
    assert len(_rows(tmp_path / "out.parquet")) == 6  # the page that only opts out of another robot
    kept = extract([pages], tmp_path / "all.parquet", ExtractSettings(honour_opt_outs=False), progress=False)
    assert kept.pages_opted_out == 0 and kept.rows == 6 and kept.duplicates == 15  # the same images, 3 pages


def _warc_record(kind: str, uri: str, payload: bytes, content_type: str) -> bytes:
    head = (
        f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + payload + b"\r\n\r\n")  # one gzip member per record, as Common Crawl


def test_warc_and_wat_files(tmp_path):
    body = (
        b'<html><body><img src="/x/cat.jpg" alt="A tabby cat asleep on a sofa">'
        b'<img src="http://other.example/dog.png" title="A dog catching a frisbee"></body></html>'
    )
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    )
    gzipped = gzip.compress(b'<html><body><img src="z.jpg" alt="Fresh bread on a wooden table"></body></html>')
    response2 = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n" + gzipped
    noai = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Robots-Tag: noai\r\n\r\n" + body
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n" + body
    warc = tmp_path / "crawl.warc.gz"
    warc.write_bytes(
        _warc_record("warcinfo", "", b"software: test", "application/warc-fields")
        + _warc_record("response", "https://site.example/a/page.html", response, "application/http; msgtype=response")
        + _warc_record("response", "https://site.example/b/", response2, "application/http; msgtype=response")
        + _warc_record("response", "https://site.example/c/", noai, "application/http; msgtype=response")
        + _warc_record("response", "https://site.example/d/", missing, "application/http; msgtype=response")
    )
    wat_json = {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Target-URI": "https://news.example/story/1"},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {
                    "Headers": {"Content-Type": "text/html"},
                    "HTML-Metadata": {
                        "Head": {"Base": "https://img.news.example/", "Metas": [{"name": "viewport", "content": "x"}]},
                        "Links": [
                            {"path": "A@/href", "url": "/other-story", "text": "Another story"},
                            {"path": "IMG@/src", "url": "photos/1.jpg", "alt": "Firefighters at the scene of a blaze"},
                            {"path": "IMG@/src", "url": "photos/2.jpg", "alt": "12345"},
                            {"path": "IMG@/src", "url": "/track/pixel.gif", "alt": "tracking"},
                        ],
                    },
                }
            },
        }
    }
    wat = tmp_path / "crawl.warc.wat.gz"
    wat.write_bytes(
        _warc_record("metadata", "https://news.example/story/1", json.dumps(wat_json).encode(), "application/json")
    )

    report = extract([warc, wat], tmp_path / "out.parquet", progress=False)
    rows = [(r["url"], r["caption_source"], r["page_url"]) for r in _rows(tmp_path / "out.parquet")]
    assert rows == [
        ("https://site.example/x/cat.jpg", "alt", "https://site.example/a/page.html"),
        ("http://other.example/dog.png", "title", "https://site.example/a/page.html"),
        ("https://site.example/b/z.jpg", "alt", "https://site.example/b/"),
        ("https://img.news.example/photos/1.jpg", "alt", "https://news.example/story/1"),
    ]
    assert (report.pages, report.pages_opted_out) == (4, 1)  # the 404 page is not a page
    assert report.caption_rules["numeric"] == 1 and report.skipped["tracker"] == 1


def test_url_lists_and_the_cli(tmp_path):
    table = tmp_path / "list.csv"
    table.write_text(
        "URL,TEXT,page_url\n"
        "https://a.example/1.jpg,A white horse in a green field,https://a.example/\n"
        "https://a.example/2.jpg,DSC_0042.JPG,\n"
        "https://a.example/3.jpg,,\n"
        "https://a.example/4.jpg,www.example.com/gallery,\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "cliplab", "data", "extract", str(table), str(tmp_path / "o.parquet"), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == 1 and report["caption_rules"]["filename"] == 1 and report["caption_rules"]["url"] == 1
    assert report["skipped"] == {"no_caption": 1}
    assert _rows(tmp_path / "o.parquet")[0]["page_url"] == "https://a.example/"
    bad = subprocess.run(
        [sys.executable, "-m", "cliplab", "data", "extract", str(tmp_path / "nope.html"), str(tmp_path / "x.parquet")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "no such input" in bad.stderr and "Traceback" not in bad.stderr


def test_caption_rules_name_and_count_what_they_remove():
    captions = {
        None: ["A brown dog running on the beach", "Ein Hund läuft am Strand entlang", "Two dogs"],
        "empty": ["", "   "],
        "numeric": ["978-3-16-148410-0", "12.50"],
        "filename": ["IMG_1234.JPG", "photo.png"],
        "url": ["https://example.com/dogs", "www.example.org"],
        "boilerplate": ["image", "Click here!", "Photo 3 of 10", "thumbnail"],
        "too_short": ["Dog", "a b"],
        "too_long": [" ".join(["word"] * 30)],
    }
    flat = [(rule, c) for rule, group in captions.items() for c in group]
    rules = CaptionFilter(max_words=20, max_repeats=0)
    result = rules.apply([c for _, c in flat])
    assert result.reasons == [rule for rule, _ in flat]
    assert result.counts == {r: len(captions.get(r, [])) for r in rules.rules}

    english = CaptionFilter(languages=["en"], max_repeats=0)
    assert english.rule("Ein Hund läuft am Strand entlang") == "language"
    assert english.rule("A brown dog running on the beach") is None
    assert english.rule("Two dogs") is None  # too short to tell: kept

    repeated = CaptionFilter(max_repeats=2).apply(
        ["Our shop logo design"] * 4 + ["A cat asleep"] * 3, [f"u{i}" for i in range(4)] + ["c", "c", "c"]
    )
    assert repeated.reasons == ["repeated"] * 4 + [None] * 3  # one image under one caption is not repeated

    # the trainer's rules are the first three, unchanged
    assert WEB_CAPTION_RULES[:3] == CAPTION_RULES
    assert [caption_rule(c) for c in ["", "12345", "IMG_0001", "a cat"]] == ["empty", "numeric", "filename", None]
    with pytest.raises(ValueError, match="unknown caption rules"):
        CaptionFilter(rules=["empty", "nonsense"])


def test_robots_txt_longest_match_and_agent_groups():
    text = """
    User-agent: *
    Disallow: /private/
    Allow: /private/public-*.jpg$

    User-agent: cliplab
    User-agent: otherbot
    Disallow: /no-cliplab/
    Disallow: /*.gif$
    """
    ours = RobotsRules.parse(text)
    assert not ours.allows("http://h/no-cliplab/a.jpg") and not ours.allows("http://h/x/anim.gif")
    assert ours.allows("http://h/private/x.jpg")  # our group replaces the * group
    everyone = RobotsRules.parse(text, agent="somebot")
    assert not everyone.allows("http://h/private/x.jpg")
    assert everyone.allows("http://h/private/public-1.jpg")  # longer Allow wins
    assert not everyone.allows("http://h/private/public-1.jpg?size=2")  # $ anchors
    assert everyone.allows("http://h/no-cliplab/a.jpg")
    assert RobotsRules.parse("User-agent: *\nDisallow:\n").allows("http://h/anything")
    assert RobotsRules.parse("User-agent: *\nDisallow: /a%7Eb/\n").allows("http://h/a~b/x") is False
    assert not RobotsRules.disallow_all().allows("http://h/x") and RobotsRules.allow_all().allows("http://h/x")


def test_opt_out_directives_scoped_by_agent():
    assert opted_out(["noai"]) == "noai"
    assert opted_out(["noindex, nofollow"]) == "noindex"
    assert opted_out(["otherbot: noai"]) is None
    assert opted_out(["otherbot: noai", "cliplab: noimageai"]) == "noimageai"
    assert opted_out(["googlebot: noindex, cliplab: noai"]) == "noai"
    assert opted_out(["unavailable_after: 25 Jun 2030 15:00:00 PST"]) is None
    assert opted_out(["noai"], directives=frozenset({"noimageai"})) is None
    html = '<head><meta name="robots" content="noimageai"><meta name="viewport" content="noai"></head>'
    assert meta_robots_directives(html) == ["noimageai"]


def test_url_list_columns_are_found_by_name(tmp_path):
    from cliplab.data.web.tables import read_url_table

    pq.write_table(
        pa.table({"URL": ["http://a/1.jpg"], "TEXT": ["a cat"], "similarity": [0.31]}), tmp_path / "l.parquet"
    )
    table = read_url_table(tmp_path / "l.parquet")
    assert table.column_names == ["url", "caption", "similarity"]
    (tmp_path / "l.jsonl").write_text(json.dumps({"image_url": "http://a/2.jpg", "alt": "a dog"}) + "\n")
    assert read_url_table(tmp_path / "l.jsonl").to_pylist() == [{"url": "http://a/2.jpg", "caption": "a dog"}]
    (tmp_path / "clash.csv").write_text("url,caption,status,width\nhttp://a/3.jpg,a bird,done,12\n")
    clash = read_url_table(tmp_path / "clash.csv", reserved=("status", "width"))
    assert clash.to_pylist() == [
        {"url": "http://a/3.jpg", "caption": "a bird", "status_input": "done", "width_input": "12"}
    ]
    (tmp_path / "bad.csv").write_text("link_to_it,words\nx,y\n")
    with pytest.raises(ValueError, match="cannot find the URL column"):
        read_url_table(tmp_path / "bad.csv")
