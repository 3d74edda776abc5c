"""Large stores: the compressed on-disk index, the codes layout, crash safety of both, incremental updates."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import faiss
import numpy as np
import pytest

from cliplab.identity import ModelIdentity
from cliplab.index import ann, ann_ondisk, compressed
from cliplab.index.backends import open_backend
from cliplab.index.backends.local import LocalBackend
from cliplab.index.store import NewItem, Store

DIM = 64
MODEL = ModelIdentity("synthetic", "0" * 32, DIM)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Clusters:
    """Clustered unit vectors like bench_search.py's (``centres`` clusters), and queries from elsewhere."""

    def __init__(self, seed=0, centres=60):
        self.rng = np.random.default_rng(seed)
        self.centres = unit(self.rng.standard_normal((centres, DIM)))

    def draw(self, n, centres=None):
        centres = self.centres if centres is None else centres
        noise = 0.5 * self.rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
        return unit(centres[self.rng.integers(0, len(centres), n)] + noise)


def fill(root, images, texts=None, batch=5000):
    with Store.create(root, MODEL) as store:
        for start in range(0, len(images), batch):
            store.put(
                NewItem(f"/photos/{i}.jpg", "image", images[i], path=f"/photos/{i}.jpg")
                for i in range(start, min(start + batch, len(images)))
            )
        if texts is not None:
            store.put(NewItem(f"text:{i}", "text", texts[i], caption=f"caption {i}") for i in range(len(texts)))


def exact(queries, vectors, ids, k=10):
    order = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    return ids[order]


@pytest.fixture(scope="module")
def data():
    clusters = Clusters()
    return clusters, clusters.draw(30_000), unit(clusters.rng.standard_normal((300, DIM)))


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    """A store of 30,000 images and 300 texts switched to the compressed layout and index."""
    _clusters, images, texts = data
    root = tmp_path_factory.mktemp("large") / "store"
    fill(root, images, texts)
    with Store(root, writer=True) as store:
        params = ann.refresh_indexes(store, compressed=True)
    return root, params


def test_compressed_index_agrees_with_exact_search_to_the_tuned_recall(built, data):
    root, params = built
    clusters, images, texts = data
    image_params = params["image"]
    assert image_params.type == "compressed" and image_params.built_count == 30_000
    assert image_params.tuned_recall >= ann_ondisk.TARGET_RECALL
    assert image_params.tuned_recall_other >= ann_ondisk.TARGET_RECALL_OTHER
    backend = open_backend(root)
    backend.refresh()
    ids = np.arange(1, 30_001)
    stored = backend.store.vectors("image")[1]  # what the store holds (SQ8 codes), which tuning targets
    # new queries: image-like from the stored clusters, text-like from directions the store lacks
    cases = (
        (clusters.draw(300), image_params.tuned_recall, 0.90),
        (texts[:200], image_params.tuned_recall_other, 0.80),
    )
    for queries, tuned, against_float32 in cases:
        _, found = backend.search("image", queries, 10)
        measured = ann_ondisk.recall(found, exact(queries, stored, ids))
        assert measured >= tuned - 0.03, (measured, tuned)
        assert ann_ondisk.recall(found, exact(queries, images, ids)) >= against_float32
    # the scores are the stored codes' inner products (SQ8: within 1e-2 of float32)
    queries = clusters.draw(20)
    scores, found = backend.search("image", queries, 5)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, images[found - 1]), atol=1e-2)
    backend.close()


def test_codes_layout_holds_the_vectors_in_a_fraction_of_the_space(built, data):
    root, _ = built
    _, images, _ = data
    with Store(root) as store:
        assert store.layout == "codes" and not store.has_sqlite_vectors()
        decoded = store.vectors("image")[1]
        assert np.abs(decoded - images).max() < 0.01
        assert np.allclose(store.vector(7), decoded[6])
        codes_bytes = store.codes.disk_bytes()
    assert codes_bytes < 30_300 * DIM * 1.01 + 10_000  # one byte a dimension (SQ8)
    assert (root / "store.sqlite").stat().st_size < 30_300 * 4 * DIM / 2  # the float32 blobs are gone


def test_merged_on_disk_index_equals_an_in_ram_build(tmp_path, data):
    clusters, images, _ = data
    build = ann_ondisk.OnDiskBuild(tmp_path / "build")
    build.train(lambda: images[:20_000], nlist=256, m=8)
    chunks = [(np.arange(s + 1, s + 10_001), images[s : s + 10_000]) for s in range(0, 30_000, 10_000)]
    shards = build.add_shards((i, lambda c=c: c) for i, c in enumerate(chunks))
    merged = ann_ondisk.read_merged(build.merge(shards, tmp_path / "merged"))
    in_ram = ann_ondisk.in_ram_index(build.trained(), chunks)
    on_disk = faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists)
    ram = faiss.extract_index_ivf(in_ram).invlists
    assert isinstance(on_disk, faiss.OnDiskInvertedLists) and (tmp_path / "merged" / "lists.ivfdata").is_file()
    assert merged.ntotal == in_ram.ntotal == 30_000
    for number in range(256):
        size = ram.list_size(number)
        assert on_disk.list_size(number) == size
        if size:
            ids = faiss.rev_swig_ptr(on_disk.get_ids(number), size)
            ram_ids = faiss.rev_swig_ptr(ram.get_ids(number), size)
            np.testing.assert_array_equal(ids, ram_ids)
            width = on_disk.code_size * size
            codes = faiss.rev_swig_ptr(on_disk.get_codes(number), width)
            np.testing.assert_array_equal(codes, faiss.rev_swig_ptr(ram.get_codes(number), width))
    queries = clusters.draw(50)
    for index in (merged, in_ram):
        faiss.extract_index_ivf(index).nprobe = 16
    np.testing.assert_array_equal(merged.search(queries, 10)[1], in_ram.search(queries, 10)[1])


@pytest.mark.slow
def test_additions_are_found_at_once_removals_never_and_the_writer_folds_and_retrains(tmp_path, data, monkeypatch):
    clusters, images, _texts = data
    root = tmp_path / "store"
    fill(root, images[:25_000])
    with Store(root, writer=True) as store:
        ann.refresh_indexes(store, compressed=True)
    reader = LocalBackend(root)
    reader.refresh()
    with Store(root, writer=True) as store:
        added = clusters.draw(300)
        store.put(NewItem(f"/new/{i}.jpg", "image", added[i], path=f"/new/{i}.jpg") for i in range(300))
        store.put([], delete_keys=[f"/photos/{i}.jpg" for i in range(100)])
    reader.refresh()
    index = reader._indexes["image"]
    assert isinstance(index, ann_ondisk.CompressedIndex) and len(index.delta_ids) == 300 and len(index.removed) == 100
    scores, found = reader.search("image", added[:20], 1)
    assert (found[:, 0] > 25_000).all() and (scores[:, 0] > 0.99).all()  # a new item finds itself
    _, found = reader.search("image", images[:100], 10)
    assert not np.isin(found, np.arange(1, 101)).any()  # removed items are never returned
    monkeypatch.setattr(compressed, "FOLD_MIN", 200)
    monkeypatch.setattr(compressed, "FOLD_FRACTION", 0.01)
    with Store(root, writer=True) as store:
        folded = ann.refresh_indexes(store)["image"]
    assert folded.generation == 2 and folded.built_count == 25_300
    reader.refresh()
    assert len(reader._indexes["image"].delta_ids) == 0
    _, found = reader.search("image", added[:20], 1)
    assert (found[:, 0] > 25_000).all()
    # drift: vectors from elsewhere sit far from every centroid, so the writer re-trains
    with Store(root, writer=True) as store:
        far = Clusters(seed=5, centres=30).draw(3000)
        store.put(NewItem(f"/far/{i}.jpg", "image", far[i], path=f"/far/{i}.jpg") for i in range(3000))
        trained_before = (compressed._build_folder(store, "image").trained_path).stat().st_mtime_ns
        retrained = ann.refresh_indexes(store)["image"]
        assert retrained.generation == 3 and retrained.built_count == 28_200
        assert compressed._build_folder(store, "image").trained_path.stat().st_mtime_ns != trained_before
    reader.close()


def test_small_stores_keep_the_sqlite_layout_and_convert_when_asked(tmp_path, data):
    _, images, _ = data
    root = tmp_path / "store"
    fill(root, images[:2000])
    with Store(root, writer=True) as store:
        ann.refresh_indexes(store)
        assert store.layout == "sqlite" and store.meta("schema_version") == "1"
        before = store.vectors("image")[1]
    with sqlite3.connect(root / "store.sqlite") as db:  # what earlier versions wrote: float32 blobs
        assert db.execute("SELECT length(vector) FROM items LIMIT 1").fetchone()[0] == 4 * DIM
    with Store(root, writer=True) as store:
        ann.refresh_indexes(store, compressed=True)
        assert store.layout == "codes" and store.meta("schema_version") == "2"
        np.testing.assert_allclose(store.vectors("image")[1], before, atol=0.01)


_KILLED_BUILD = """
import sys, numpy as np
from cliplab.index import ann, ann_ondisk
from cliplab.index.store import Store
ann_ondisk.SHARD_ROWS = 3000
with Store(sys.argv[1], writer=True) as store:
    ann.refresh_indexes(store, compressed=True)
"""


def _run_and_kill(script, root, when, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(root)], env=env)
    deadline = time.time() + timeout
    while not when() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return killed


@pytest.mark.slow
def test_kill_9_during_conversion_build_or_update_leaves_a_store_that_opens_and_answers(tmp_path, data):
    clusters, images, _ = data
    root = tmp_path / "store"
    fill(root, images)
    ids = np.arange(1, 30_001)
    queries = clusters.draw(50)
    truth = exact(queries, images, ids)

    def answers(minimum_recall):
        with contextlib.closing(LocalBackend(root)) as backend:
            backend.refresh()
            _, found = backend.search("image", queries, 10)
        assert ann_ondisk.recall(found, truth) >= minimum_recall

    shards = ann_ondisk.kind_folder(root, "image") / "build" / "shards"
    kills = [
        lambda: (root / "vectors" / "codes.u8").is_file() and (root / "vectors" / "codes.u8").stat().st_size > 0,
        lambda: shards.is_dir() and len(list(shards.glob("shard-*.index"))) >= 2,
    ]
    for number, when in enumerate(kills):
        assert _run_and_kill(_KILLED_BUILD, root, when), "the build ended before it could be killed"
        if number == 1:
            assert 2 <= len(list(shards.glob("shard-*.index"))) < 10  # killed between shards of 3,000
        answers(0.9)  # searched exactly (or by the index of the last finished build) meanwhile
    trained = ann_ondisk.kind_folder(root, "image") / "build" / "trained.index"
    trained_at = trained.stat().st_mtime_ns
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_BUILD), str(root)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=True,
    )
    assert not trained.exists() or trained.stat().st_mtime_ns == trained_at  # resumed, not re-trained
    assert ann_ondisk.read_current(root, "image").generation == 1
    answers(0.85)
    # a kill while adding items: the committed batches are there, the uncommitted one is not
    more = clusters.draw(200_000)  # the same distribution as the store's vectors
    np.save(tmp_path / "more.npy", more)
    update = f"""
import sys, numpy as np
from cliplab.index.store import Store, NewItem
more = np.load({str(tmp_path / "more.npy")!r})
with Store(sys.argv[1], writer=True) as store:
    for batch in range(1000):
        store.put(NewItem(f"/more/{{batch}}/{{i}}.jpg", "image", more[batch * 200 + i], path="x") for i in range(200))
"""
    with Store(root) as store:
        before = store.count("image")

    def grew():
        try:
            with Store(root) as store:
                return store.count("image") >= before + 1000
        except Exception:
            return False

    assert _run_and_kill(update, root, grew)
    with Store(root) as store:
        count = store.count("image")
        assert (count - before) % 200 == 0 and count > before
        _, vectors = store.vectors("image", after_id=30_000)
    cosine = np.einsum("nd,nd->n", vectors, more[: len(vectors)])  # every committed code was written
    # an unwritten code would decode to a constant vector (cosine near 0); SQ8 clips a rare coordinate
    assert cosine.mean() > 0.999 and cosine.min() > 0.95
    answers(0.85)
