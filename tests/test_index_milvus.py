"""The Milvus backend against a real Milvus server: every search direction returns what the local
store returns, incremental syncs, the CLI, and the service on top of it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_model
from fastapi.testclient import TestClient
from milvus_server import milvus_server
from test_index import write_images

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.index import Searcher, Store, index_paths
from cliplab.index.milvus import MilvusCollection, sync_to_milvus
from cliplab.model import get_preset
from cliplab.serve import create_app

pytestmark = pytest.mark.slow  # a Milvus server takes about 10 s to start


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory):
    with milvus_server(tmp_path_factory.mktemp("milvus") / "server") as uri:
        yield uri


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus-store")
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), root / "model", "cliplab")
    pipeline = cliplab.load(root / "model", device="cpu")
    write_images(root / "photos", 12)
    (root / "captions.csv").write_text("id,text\nc1,a red square\nc2,a blue circle\nc3,two dogs in snow\n")
    index_paths(pipeline, root / "store", [root / "photos"], captions=root / "captions.csv", workers=0, progress=False)
    return pipeline, root


def same_hits(local, remote):
    assert [h.item.id for h in remote] == [h.item.id for h in local]
    assert [h.item.to_dict() for h in remote] == [h.item.to_dict() for h in local]  # metadata the page shows
    np.testing.assert_allclose([h.score for h in remote], [h.score for h in local], atol=1e-5)


def test_every_search_direction_returns_what_the_local_store_returns(milvus_uri, indexed, tmp_path):
    pipeline, root = indexed
    collection = MilvusCollection(milvus_uri, "directions")
    with Store(root / "store", writer=True) as store:
        done = sync_to_milvus(store, collection)
    assert (done["upserted"], done["deleted"]) == (15, 0)
    query_image = root / "photos" / "part1" / "img004.bmp"
    with Searcher(pipeline, root / "store") as local, Searcher(pipeline, collection) as remote:
        assert remote.store.stats()["images"] == 12 and remote.store.stats()["texts"] == 3
        for target in ("image", "text", "all"):
            same_hits(local.text("two dogs in snow", 8, target), remote.text("two dogs in snow", 8, target))
            same_hits(local.image(query_image, 8, target), remote.image(query_image, 8, target))
            same_hits(local.item(3, 8, target), remote.item(3, 8, target))
        assert remote.store.item(3).path == local.store.item(3).path
        np.testing.assert_allclose(remote.store.vector(3), local.store.vector(3), atol=1e-6)


def test_syncs_are_incremental_and_follow_removals(milvus_uri, indexed, tmp_path):
    pipeline, root = indexed
    import shutil

    shutil.copytree(root / "photos", tmp_path / "photos")
    store_dir = tmp_path / "store"
    index_paths(pipeline, store_dir, [tmp_path / "photos"], workers=0, progress=False)
    collection = MilvusCollection(milvus_uri, "incremental")
    with Store(store_dir, writer=True) as store:
        assert sync_to_milvus(store, collection)["upserted"] == 12
        assert sync_to_milvus(store, collection) == {"collection": "incremental", "upserted": 0, "deleted": 0}
    removed = sorted((tmp_path / "photos").rglob("*.png"))[0]
    removed.unlink()
    write_images(tmp_path / "photos" / "more", 2, seed=7)
    index_paths(pipeline, store_dir, [tmp_path / "photos"], workers=0, progress=False)
    with Store(store_dir, writer=True) as store:
        done = sync_to_milvus(store, collection)
    assert (done["upserted"], done["deleted"]) == (2, 1)
    with Searcher(pipeline, store_dir) as local, Searcher(pipeline, collection) as remote:
        assert remote.store.count("image") == 13
        same_hits(local.text("a photo", 20), remote.text("a photo", 20))


def test_cli_index_with_milvus_and_the_service_on_the_collection(milvus_uri, indexed, tmp_path, capsys):
    pipeline, root = indexed
    model = str(root / "model")
    args = ["index", str(root / "photos"), "--store", str(tmp_path / "store"), "--captions", str(root / "captions.csv")]
    assert main([*args, "--model", model, "--milvus", milvus_uri, "--collection", "served"]) == 0
    assert "Milvus collection served: 15 items upserted, 0 deleted" in capsys.readouterr().out
    local = TestClient(create_app(pipeline, str(tmp_path / "store")))
    remote = TestClient(create_app(pipeline, MilvusCollection(milvus_uri, "served")))
    health = remote.get("/api/health").json()
    assert (health["images"], health["texts"], health["layout"]) == (12, 3, "milvus")
    requests = [
        ("get", "/api/search", {"params": {"q": "two dogs in snow", "k": 10, "target": "all"}}),
        ("get", "/api/search/item/2", {"params": {"k": 5}}),
        ("get", "/api/item/2", {}),
    ]
    for method, path, kwargs in requests:
        a, b = getattr(local, method)(path, **kwargs), getattr(remote, method)(path, **kwargs)
        assert a.status_code == b.status_code == 200
        assert _rounded(a.json()) == _rounded(b.json())
    with open(root / "photos" / "part0" / "img000.jpg", "rb") as handle:
        data = handle.read()
    a = local.post("/api/search/image", files={"file": ("q.jpg", data)}, data={"k": "5"}).json()
    b = remote.post("/api/search/image", files={"file": ("q.jpg", data)}, data={"k": "5"}).json()
    assert _rounded(a) == _rounded(b)
    thumbnail = remote.get(b["hits"][0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert remote.get("/").status_code == 200
    assert main(["serve", "--milvus", milvus_uri, "--collection", "missing", "--model", model]) == 1
    assert "no collection 'missing'" in capsys.readouterr().err


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
