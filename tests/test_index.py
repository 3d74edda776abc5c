"""The search store: incremental indexing, crash safety, locking, search in every direction, FAISS."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import random_model
from PIL import Image

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.index import ModelMismatchError, Searcher, Store, StoreLockedError, ann, index_paths
from cliplab.index.scan import read_captions
from cliplab.model import get_preset

FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def write_images(folder, n, seed=0, size=(80, 64)):
    """``n`` distinct images cycling through every supported format, in nested folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        fmt = FORMATS[i % len(FORMATS)]
        sub = folder / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((size[1], size[0], 3), np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        x, y = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
        pixels[y : y + size[1] // 2, x : x + size[0] // 2] = rng.integers(0, 255, 3)
        path = sub / f"img{i:03d}.{EXTENSIONS[fmt]}"
        Image.fromarray(pixels).save(path, format=fmt)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nano"
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), path, "cliplab")
    return str(path)


@pytest.fixture(scope="module")
def pipeline(model_path):
    return cliplab.load(model_path, device="cpu")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    paths = write_images(folder, 12)
    (folder / "broken.jpg").write_bytes(paths[0].read_bytes()[:100])  # truncated JPEG
    (folder / "notes.png").write_text("not an image")
    (folder / "empty.webp").write_bytes(b"")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


@pytest.fixture
def captions(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text('id,text\nc1,a red square\nc2,"a blue, round thing"\nc3,two dogs in snow\n')
    return path


def test_index_embeds_every_image_and_records_unreadable_files(pipeline, photos, captions, tmp_path):
    report = index_paths(
        pipeline, tmp_path / "store", [photos], captions=captions, batch_size=5, workers=1, progress=False
    )
    assert (report.embedded, report.texts_embedded, report.total_images, report.total_texts) == (12, 3, 12, 3)
    assert sorted(os.path.basename(f["path"]) for f in report.failed) == ["broken.jpg", "empty.webp", "notes.png"]
    assert all(f["reason"] for f in report.failed)
    with Store(tmp_path / "store") as store:
        item = store.item_by_key(str((photos / "part0" / "img000.jpg").resolve()))
        assert item.size == (photos / "part0" / "img000.jpg").stat().st_size and len(item.sha256) == 64
        assert store.item_by_key("text:c2").caption == "a blue, round thing"
        expected = pipeline.embed_images([item.path])[0]
        np.testing.assert_allclose(store.vector(item.id), expected, atol=1e-6)
        assert len(store.failures()) == 3


def test_rerun_is_incremental(pipeline, photos, tmp_path):
    store_dir = tmp_path / "store"
    index_paths(pipeline, store_dir, [photos], workers=0, progress=False)
    again = index_paths(pipeline, store_dir, [photos], workers=0, progress=False)
    assert (again.embedded, again.unchanged, again.known_failures, again.failed) == (0, 12, 3, [])

    changed = photos / "part1" / "img001.png"
    Image.new("RGB", (50, 50), (9, 200, 9)).save(changed)
    touched = photos / "part2" / "img002.webp"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    (photos / "part0" / "img003.gif").unlink()
    write_images(photos / "new", 2, seed=5)
    report = index_paths(pipeline, store_dir, [photos], workers=0, progress=False)
    assert (report.embedded, report.touched, report.deleted, report.total_images) == (3, 1, 1, 13)
    with Store(store_dir) as store:
        np.testing.assert_allclose(
            store.vector(store.item_by_key(str(changed.resolve())).id), pipeline.embed_images([changed])[0], atol=1e-6
        )
        assert store.item_by_key(str((photos / "part0" / "img003.gif").resolve())) is None


def test_searching_with_another_model_is_refused(pipeline, photos, tmp_path):
    index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False)
    other = tmp_path / "other"
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=2), other, "cliplab")
    with pytest.raises(ModelMismatchError, match="was indexed with model"):
        Searcher(cliplab.load(other), tmp_path / "store")
    with pytest.raises(ModelMismatchError):
        index_paths(cliplab.load(other), tmp_path / "store", [photos], progress=False)


def test_second_writer_is_refused_while_the_first_holds_the_store(pipeline, photos, tmp_path):
    index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False)
    with Store(tmp_path / "store", writer=True):
        with pytest.raises(StoreLockedError, match="is being updated by pid"):
            index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False)
        with Searcher(pipeline, tmp_path / "store") as searcher:  # readers are never blocked
            assert len(searcher.text("anything", k=3)) == 3


def test_search_in_every_direction(pipeline, photos, captions, tmp_path):
    index_paths(pipeline, tmp_path / "store", [photos], captions=captions, workers=0, progress=False)
    query_image = photos / "part2" / "img005.tif"
    with Searcher(pipeline, tmp_path / "store") as searcher:
        images = searcher.store.vectors("image")[1]
        texts = searcher.store.vectors("text")[1]

        by_image = searcher.image(query_image, k=4)
        assert by_image[0].item.path == str(query_image.resolve()) and by_image[0].score == pytest.approx(1, abs=1e-5)
        assert [h.rank for h in by_image] == [1, 2, 3, 4]
        assert all(a.score >= b.score for a, b in itertools.pairwise(by_image))

        by_text = searcher.text("two dogs in snow", k=12)
        query = pipeline.embed_texts(["two dogs in snow"])[0]
        np.testing.assert_allclose(sorted((images @ query), reverse=True), [h.score for h in by_text], atol=1e-5)

        to_texts = searcher.image(query_image, k=3, target="text")
        assert {h.item.kind for h in to_texts} == {"text"} and len(to_texts) == 3
        text_to_text = searcher.text("two dogs in snow", k=1, target="text")
        assert text_to_text[0].item.caption == "two dogs in snow"

        both = searcher.text("a red square", k=15, target="all")
        assert {h.item.kind for h in both} == {"image", "text"}
        np.testing.assert_allclose(
            [h.score for h in both],
            sorted(np.concatenate([images, texts]) @ pipeline.embed_texts(["a red square"])[0], reverse=True),
            atol=1e-5,
        )

        neighbour_ids = [h.item.id for h in searcher.item(by_image[0].item.id, k=3)]
        assert by_image[0].item.id not in neighbour_ids
        assert neighbour_ids == [h.item.id for h in by_image[1:4]]
        with pytest.raises(KeyError):
            searcher.item(10**9)


def test_searcher_sees_items_committed_after_it_opened(pipeline, photos, tmp_path):
    index_paths(pipeline, tmp_path / "store", [photos / "part0"], workers=0, progress=False)
    with Searcher(pipeline, tmp_path / "store") as searcher:
        assert len(searcher.text("x", k=50)) == 4
        index_paths(pipeline, tmp_path / "store", [photos / "part1"], workers=0, progress=False)
        searcher.refresh()
        assert len(searcher.text("x", k=50)) == 8


def clustered_vectors(n, dim=64, clusters=50, seed=0, centres_seed=0):
    centres = np.random.default_rng(centres_seed).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_index_is_tuned_to_the_target_recall_and_stays_in_sync(tmp_path):
    vectors = clustered_vectors(6000)
    ids = np.arange(1, 6001, dtype=np.int64)
    index = ann.ivf_index("image", ids, vectors)
    assert index.params.type == "ivf" and index.params.nlist == ann.choose_nlist(6000)
    assert index.params.tuned_recall >= ann.TARGET_RECALL and index.params.nprobe < index.params.nlist

    exact = ann.flat_index("image", ids, vectors)
    new_queries = clustered_vectors(200, seed=7)  # new vectors from the same clusters
    elsewhere = clustered_vectors(200, seed=7, centres_seed=7)  # from clusters the store does not have
    for queries, wanted in ((new_queries, 0.97), (elsewhere, 0.85)):
        _, truth = exact.search(queries, 10)
        _, found = index.search(queries, 10)
        assert ann.recall_at_k(found, truth) >= wanted

    index.sync(ids[100:], np.arange(6001, 6011), clustered_vectors(10, seed=3))  # drop 100, add 10
    _, found = index.search(vectors[:100], 1)
    assert not np.isin(found, ids[:100]).any()
    index.save(tmp_path / "image.npz")
    loaded = ann.VectorIndex.load(tmp_path / "image.npz")
    assert len(loaded) == 5910 and loaded.params == index.params
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert ann.VectorIndex.load(tmp_path / "bad.npz") is None


def test_store_switches_to_ivf_past_the_threshold_and_searches_agree(pipeline, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_LIMIT", 8)
    index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False)
    assert (tmp_path / "store" / "ann" / "image.npz").is_file()
    with Searcher(pipeline, tmp_path / "store") as searcher:
        assert searcher._backend._indexes["image"].params.type == "ivf"
        hits = searcher.text("a thing", k=12)
        assert len(hits) == 12  # nprobe is tuned for this store; 12 items fit in the scanned lists
    monkeypatch.setattr(ann, "EXACT_LIMIT", 10**6)
    with Searcher(pipeline, tmp_path / "store") as exact:
        assert [h.item.id for h in exact.text("a thing", k=12)] == [h.item.id for h in hits]


def test_cli_index_and_search(model_path, photos, captions, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert (
        main(
            [
                "index",
                str(photos),
                "--store",
                store,
                "--captions",
                str(captions),
                "--model",
                model_path,
                "--json",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["embedded"] == 12 and len(report["failed"]) == 3

    sheet = tmp_path / "sheet.html"
    assert main(["search", store, "two dogs", "-k", "3", "--model", model_path, "--json", "--html", str(sheet)]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["kind"] == "image" for h in hits)
    assert sheet.read_text().count("data:image/jpeg;base64,") == 3

    image = str(photos / "part0" / "img000.jpg")
    assert main(["search", store, "--image", image, "--target", "text", "-k", "2", "--model", model_path]) == 0
    assert capsys.readouterr().out.count("text") == 2
    assert main(["search", store, "--failures", "--model", model_path]) == 0
    assert "broken.jpg" in capsys.readouterr().out

    assert main(["search", store, "a", "--image", image, "--model", model_path]) == 1
    assert "exactly one query" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "nowhere"), "a", "--model", model_path]) == 1
    assert "is not a cliplab store" in capsys.readouterr().err


def wait_until_committed(store_dir, process, items: int, timeout: float) -> None:
    """Wait until the indexer ``process`` has committed ``items`` items to the store (or ended, or timed out)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if (store_dir / "store.sqlite").exists():
            with Store(store_dir) as store:
                if store.count() >= items:
                    return
        time.sleep(0.05)


@pytest.mark.slow
def test_index_killed_with_sigkill_keeps_committed_batches_and_the_next_run_finishes(model_path, tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 300, size=(48, 48))
    store_dir = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "cliplab",
        "index",
        str(photos),
        "--store",
        str(store_dir),
        "--model",
        model_path,
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--json",
    ]
    committed = []
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_committed(store_dir, process, (committed[-1] if committed else 0) + 8, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with Store(store_dir) as store:  # opens, and holds only whole batches
            count = store.count()
            committed.append(count)
            for item in store.iter_items():
                assert store.vector(item.id).shape == (store.model.embed_dim,)
    assert committed == sorted(committed) and committed[0] < 300  # at least the first kill landed mid-run
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    clean = tmp_path / "clean"
    index_paths(cliplab.load(model_path), clean, [photos], workers=0, progress=False)
    with Store(store_dir) as resumed, Store(clean) as reference:
        got = {i.key: resumed.vector(i.id) for i in resumed.iter_items()}
        want = {i.key: reference.vector(i.id) for i in reference.iter_items()}
        assert got.keys() == want.keys() and len(got) == 300
        assert max(float(np.abs(got[k] - want[k]).max()) for k in got) < 1e-5


def test_captions_file_is_the_whole_set_of_texts(pipeline, photos, captions, tmp_path):
    index_paths(pipeline, tmp_path / "store", [photos], captions=captions, workers=0, progress=False)
    captions.write_text("id,text\nc1,a red square\nc2,a green, round thing\n")  # c2 changed, c3 gone
    report = index_paths(pipeline, tmp_path / "store", [photos], captions=captions, workers=0, progress=False)
    assert (report.texts_embedded, report.texts_unchanged, report.texts_deleted, report.deleted) == (1, 1, 1, 0)
    with Store(tmp_path / "store") as store:
        assert sorted(store.text_states()) == ["text:c1", "text:c2"]
    report = index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False)  # no file: texts kept
    assert report.texts_deleted == 0 and report.total_texts == 2


@pytest.mark.parametrize(
    "content",
    [
        'image,caption\nc1,a red square\nc2,"a blue, round thing"\n',
        'caption,id,source\na red square,c1,web\n"a blue, round thing",c2,web\n',
        "c1,a red square\nc2,a blue, round thing\n",
    ],
    ids=["image-caption-header", "named-columns-in-any-order", "no-header"],
)
def test_captions_csv_headers_are_read_by_name_never_as_a_text(content, tmp_path):
    """A header such as `image,caption` names the columns: it is not indexed as a text (it once replaced
    a store's texts by the file's rows, header included)."""
    path = tmp_path / "captions.csv"
    path.write_text(content)
    assert read_captions(path) == [("c1", "a red square"), ("c2", "a blue, round thing")]


def test_cli_reports_removed_texts(model_path, photos, captions, tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["index", str(photos), "--store", store, "--captions", str(captions), "--model", model_path]) == 0
    captions.write_text("id,text\nc1,a red square\n")
    capsys.readouterr()
    assert main(["index", str(photos), "--store", store, "--captions", str(captions), "--model", model_path]) == 0
    assert "0 images and 2 texts removed" in capsys.readouterr().out


def test_readers_search_exactly_until_the_ivf_index_is_saved_then_load_it(pipeline, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_LIMIT", 8)
    index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False, update_ann=False)
    with Searcher(pipeline, tmp_path / "store") as searcher:
        assert searcher._backend._indexes["image"].params.type == "flat"  # no k-means training in a reader
        with Store(tmp_path / "store", writer=True) as store:
            ann.refresh_indexes(store)
        searcher.refresh()
        assert searcher._backend._indexes["image"].params.type == "ivf"
        write_images(photos / "later", 2, seed=8)
        index_paths(pipeline, tmp_path / "store", [photos], workers=0, progress=False, update_ann=False)
        searcher.refresh()  # synced in place: the new items are found without a rebuild
        assert (
            len(searcher._backend._indexes["image"]) == 14 and searcher._backend._indexes["image"].params.type == "ivf"
        )


def test_search_and_serve_default_to_the_store_model_recorded_with_an_absolute_path(
    model_path, photos, tmp_path, monkeypatch, capsys
):
    """A store records its model so that `search` and `serve` need no --model; a relative model path is
    recorded absolute, so the store works from any folder."""
    import shutil

    from cliplab.cli.search import store_model

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(model_path, work / "nano")
    monkeypatch.chdir(work)
    assert main(["index", str(photos), "--store", "s", "--model", "nano", "--json"]) == 0
    assert store_model(str(work / "s")) == str((work / "nano").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    query = sorted(photos.glob("part0/img000.*"))[0]
    assert main(["search", str(work / "s"), "--image", str(query), "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["path"] == str(query.resolve()) and hits[0]["score"] == pytest.approx(1, abs=1e-4)
    assert main(["search", str(tmp_path / "no-store"), "a cat"]) == 1
    assert "is not a cliplab store" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_during_index_says_what_was_kept_and_how_to_continue(model_path, tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 200, size=(48, 48))
    store_dir = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "cliplab",
        "index",
        str(photos),
        "--store",
        str(store_dir),
        "--model",
        model_path,
        "--batch-size",
        "4",
        "--workers",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_committed(store_dir, process, 8, timeout=120)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the interrupt landed")
    assert process.returncode == 130, err[-2000:]
    with Store(store_dir) as store:
        kept = store.count("image")
    assert f"The store holds {kept} images and 0 texts" in err and "run the same command again to continue" in err
    assert "Traceback" not in err
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    assert report["unchanged"] == kept and report["total_images"] == 200
