"""`cliplab data filter`: every rule's count, CLIP scores equal to the pipeline's own, new shards with the
kept samples unchanged, and keep-lists that the training loader honours."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import random_model
from PIL import Image
from web_site import photo_jpeg

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.data import ShardStream
from cliplab.data.captions import CaptionFilter
from cliplab.data.web.curate import CurateSettings, curate
from cliplab.model import get_preset
from cliplab.preprocess import Preprocessor


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _reencoded(data: bytes, quality: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Two shards of 14 samples; ``expect`` maps each key to the rule that must remove it (or "")."""
    folder = tmp_path_factory.mktemp("shards")
    photos = [photo_jpeg(320 + 20 * i, 240 + 10 * i, seed=200 + i) for i in range(10)]
    samples: list[tuple[str, bytes, str, dict, str]] = []  # key, image, caption, meta, expected rule

    def add(image: bytes, caption: str, expect: str, **meta) -> None:
        key = f"{len(samples):09d}"
        try:
            width, height = Image.open(io.BytesIO(image)).size
        except OSError:
            width = height = None
        info = {"sha256": hashlib.sha256(image).hexdigest(), "original_width": width, "original_height": height, **meta}
        samples.append((key, image, caption, info, expect))

    for i in range(8):
        add(photos[i], f"a photograph of scene number {i}", "")
    add(photos[0], "the same bytes again", "duplicate")
    add(_reencoded(photos[1], 60), "a re-encoded copy", "near_duplicate")
    add(photos[8], "IMG_0042.JPG", "caption_filename")
    add(photos[9], "a tiny original", "too_small", original_width=90, original_height=60)
    add(photo_jpeg(400, 100, seed=300), "a wide panorama of the coast", "aspect_ratio")
    add(b"\xff\xd8\xff\xe0 broken jpeg", "a broken picture file", "unreadable", original_width=None)
    expect = {}
    for shard in range(2):
        with tarfile.open(folder / f"shard-{shard:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, image, caption, meta, rule in samples[shard * 7 : shard * 7 + 7]:
                _member(tf, f"{key}.jpg", image)
                _member(tf, f"{key}.txt", caption.encode())
                _member(tf, f"{key}.json", json.dumps(meta).encode())
                expect[key] = rule
    return folder, expect


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), folder / "model", "cliplab")
    return cliplab.load(folder / "model", device="cpu", precision="fp32")


def test_every_rule_removes_what_it_should_and_scores_are_the_pipelines(tmp_path, shards, pipeline):
    folder, expect = shards
    settings = CurateSettings(
        min_size=100,
        max_aspect_ratio=3.0,
        near_duplicates=0.995,  # a random model maps distinct photos within 0.97 of each other
        caption_filter=CaptionFilter(rules=["empty", "numeric", "filename"]),
        top_fraction=0.5,
        batch_size=4,
    )
    report = curate(folder, tmp_path / "curated", settings, pipeline=pipeline, progress=False)
    table = {r["key"]: r for r in pq.read_table(tmp_path / "curated" / "curation.parquet").to_pylist()}
    survivors = [k for k, rule in expect.items() if not rule]
    # the first rules remove exactly the planted samples; the score then keeps the better half
    assert {k: table[k]["removed_by"] for k in expect if expect[k]} == {k: r for k, r in expect.items() if r}
    assert report.removed["clip_score"] == len(survivors) - math.ceil(len(survivors) / 2)
    assert report.kept == math.ceil(len(survivors) / 2) and report.samples == 14
    assert sum(report.removed.values()) + report.kept == report.samples

    # scores are the cosine of the pipeline's own embeddings; the kept are the best of the survivors
    data = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                data[m.name] = tf.extractfile(m).read()
    images = pipeline.embed_images([data[f"{k}.jpg"] for k in survivors])
    texts = pipeline.embed_texts([data[f"{k}.txt"].decode() for k in survivors])
    want = dict(zip(survivors, np.sum(images * texts, axis=1).tolist()))
    assert max(abs(table[k]["clip_score"] - want[k]) for k in survivors) < 1e-5
    best = sorted(survivors, key=lambda k: -want[k])[: report.kept]
    assert sorted(k for k in table if table[k]["kept"]) == sorted(best)

    # the new shards hold the kept samples' bytes unchanged, the JSON with its score
    out = {}
    for shard in sorted((tmp_path / "curated").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                out[m.name] = tf.extractfile(m).read()
    assert sorted({n.split(".")[0] for n in out}) == sorted(best)
    assert all(out[f"{k}.jpg"] == data[f"{k}.jpg"] and out[f"{k}.txt"] == data[f"{k}.txt"] for k in best)
    assert all(abs(json.loads(out[f"{k}.json"])["clip_score"] - want[k]) < 1e-5 for k in best)


def test_threshold_keep_list_and_the_training_loader(tmp_path, shards, pipeline):
    folder, _ = shards
    probe = curate(folder, tmp_path / "probe", CurateSettings(min_clip_score=-1.0), pipeline=pipeline, progress=False)
    scores = sorted(
        r["clip_score"] for r in pq.read_table(tmp_path / "probe" / "curation.parquet").to_pylist() if r["kept"]
    )
    threshold = scores[len(scores) // 2]
    assert probe.removed["duplicate"] == 1 and probe.removed["unreadable"] == 1

    keep = tmp_path / "keep.txt"
    report = curate(
        folder, keep, CurateSettings(min_clip_score=threshold), pipeline=pipeline, keep_list=True, progress=False
    )
    lines = keep.read_text().splitlines()
    assert lines[0].startswith("# cliplab keep-list") and len(lines) - 1 == report.kept
    assert report.kept == sum(1 for s in scores if s >= threshold)
    kept_keys = {line.split("\t")[1] for line in lines[1:]}

    preprocess = Preprocessor(image_size=32)
    stream = ShardStream(
        folder,
        preprocess,
        lambda text: torch.zeros(77, dtype=torch.long),
        keep=keep,
        epochs=1,
        shuffle_buffer=0,
        caption_filter=False,
    )
    seen = sum(1 for _ in stream)
    assert seen == len(kept_keys) and stream.skipped["not_kept"] == 14 - len(kept_keys)


def test_cli_filter_without_a_model_and_its_errors(tmp_path, shards):
    folder, _ = shards
    command = [
        sys.executable,
        "-m",
        "cliplab",
        "data",
        "filter",
        str(folder),
        str(tmp_path / "out"),
        "--min-size",
        "100",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["removed"]["duplicate"] == 1 and report["removed"]["too_small"] == 1
    assert report["kept"] == 14 - 1 - 1 - 1  # duplicate, too small, and the broken one without a size
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    with pytest.raises(ValueError, match="need a model"):
        curate(folder, tmp_path / "x", CurateSettings(top_fraction=0.3), progress=False)
