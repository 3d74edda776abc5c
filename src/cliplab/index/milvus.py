"""A store mirrored into a Milvus collection, for deployments that outgrow one machine.

``cliplab index PATHS --store S --milvus URI`` indexes into the local store as always (it keeps what
the next run needs to be incremental: files, hashes, failures) and then brings the collection up to
date with it: items added since the last sync are upserted (id, kind, vector and what the web page
shows: key, path, caption, size, SHA-256), removed ones deleted. The sync is idempotent: a killed sync
is finished by the next run. ``cliplab serve --milvus URI`` and ``Searcher(pipeline, collection)``
then search the collection and need no local store: the model is recorded in the collection's
description, and thumbnails are read from the paths it holds (so the images must be readable where
the service runs, as for a local store).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
from tqdm.auto import tqdm

from ..extras import require
from ..identity import ModelIdentity
from .store import Item, ModelMismatchError, StoreError

MAX_TEXT = 8192  # characters of a key, path or caption kept in the collection
_FIELDS = ["id", "kind", "key", "path", "caption", "size", "sha256"]
_BATCH = 1000


@dataclass(frozen=True)
class MilvusCollection:
    """Where a mirrored store lives: a Milvus server (``http://HOST:19530``, ``https://...`` for a
    cluster behind TLS) and a collection name. ``token``: ``user:password`` or an API key (default
    ``$MILVUS_TOKEN``). ``index_type``: the collection's vector index (``HNSW``, ``IVF_FLAT``,
    ``DISKANN``, ``FLAT``...), built by Milvus."""

    uri: str
    name: str = "cliplab"
    token: str | None = None
    index_type: str = "HNSW"

    @classmethod
    def from_uri(cls, uri: str, name: str | None = None) -> MilvusCollection:
        """``milvus://HOST:PORT/NAME`` (``milvus+https://`` for TLS), or ``http(s)://HOST:PORT`` with ``name``."""
        parsed = urlparse(uri)
        if parsed.scheme not in ("milvus", "milvus+http", "milvus+https", "http", "https", "tcp"):
            raise ValueError(f"{uri!r} is not a Milvus address: give http://HOST:19530 or milvus://HOST:19530/NAME")
        scheme = "https" if parsed.scheme == "milvus+https" else "http"
        collection = parsed.path.strip("/") or name or "cliplab"
        return cls(f"{scheme}://{parsed.netloc}", collection)

    def client(self):
        pymilvus = require("pymilvus", "milvus", "the Milvus backend")
        token = self.token or os.environ.get("MILVUS_TOKEN") or ""
        try:
            return pymilvus.MilvusClient(uri=self.uri, token=token, timeout=30)
        except Exception as error:  # pymilvus raises its own exception types for every failure
            raise ConnectionError(
                f"cannot reach Milvus at {self.uri} ({str(error).splitlines()[0]}): is the server running "
                "and the address right? (a cluster behind TLS needs https://, and MILVUS_TOKEN if it has users)"
            ) from None


def _schema(pymilvus, dim: int):
    fields = [
        pymilvus.FieldSchema("id", pymilvus.DataType.INT64, is_primary=True),
        pymilvus.FieldSchema("kind", pymilvus.DataType.VARCHAR, max_length=8),
        pymilvus.FieldSchema("key", pymilvus.DataType.VARCHAR, max_length=MAX_TEXT * 4),
        pymilvus.FieldSchema("path", pymilvus.DataType.VARCHAR, max_length=MAX_TEXT * 4),
        pymilvus.FieldSchema("caption", pymilvus.DataType.VARCHAR, max_length=MAX_TEXT * 4),
        pymilvus.FieldSchema("size", pymilvus.DataType.INT64),
        pymilvus.FieldSchema("sha256", pymilvus.DataType.VARCHAR, max_length=64),
        pymilvus.FieldSchema("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim),
    ]
    return fields


def _index_params(index_type: str) -> dict:
    return {
        "HNSW": {"M": 16, "efConstruction": 200},
        "IVF_FLAT": {"nlist": 1024},
        "IVF_SQ8": {"nlist": 1024},
        "IVF_PQ": {"nlist": 1024, "m": 32, "nbits": 8},
    }.get(index_type, {})


def _search_params(index_type: str, k: int) -> dict:
    params = {"HNSW": {"ef": max(128, 2 * k)}, "DISKANN": {"search_list": max(100, 2 * k)}}.get(
        index_type, {"nprobe": 64}
    )
    return {"metric_type": "IP", "params": params}


class MilvusStore:
    """The read side of a mirrored store, with the :class:`~cliplab.index.store.Store` methods the
    searcher and the service use (``item``, ``items``, ``vector``, ``count``, ``stats``, ``model``)."""

    def __init__(self, collection: MilvusCollection):
        self.collection = collection
        self.client = collection.client()
        self.root = f"{collection.uri}/{collection.name}"
        if not self.client.has_collection(collection.name):
            raise StoreError(
                f"Milvus at {collection.uri} has no collection {collection.name!r}: fill it with "
                f"`cliplab index PATHS --store S --milvus {collection.uri} --collection {collection.name}`"
            )
        description = self.client.describe_collection(collection.name).get("description", "")
        try:
            self.model = ModelIdentity.from_json(json.loads(description)["model"])
        except (ValueError, KeyError, TypeError):
            raise StoreError(
                f"Milvus collection {collection.name!r} was not made by cliplab (no model recorded)"
            ) from None
        self.client.load_collection(collection.name)

    def close(self) -> None:
        self.client.close()

    def check_model(self, model: ModelIdentity) -> None:
        if model.fingerprint != self.model.fingerprint:
            raise ModelMismatchError(
                f"Milvus collection {self.collection.name!r} holds vectors of model {self.model.name!r}, "
                f"not {model.name!r}: pass --model {self.model.name}"
            )

    def items(self, ids) -> dict[int, Item]:
        ids = [int(i) for i in ids]
        found: dict[int, Item] = {}
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            rows = self.client.query(self.collection.name, filter=f"id in {chunk}", output_fields=_FIELDS)
            for row in rows:
                found[int(row["id"])] = _item(row)
        return found

    def item(self, item_id: int) -> Item | None:
        return self.items([item_id]).get(int(item_id))

    def vector(self, item_id: int) -> np.ndarray | None:
        rows = self.client.query(self.collection.name, filter=f"id == {int(item_id)}", output_fields=["vector"])
        return np.asarray(rows[0]["vector"], np.float32) if rows else None

    def count(self, kind: str | None = None) -> int:
        where = f'kind == "{kind}"' if kind else "id >= 0"
        rows = self.client.query(self.collection.name, filter=where, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def stats(self) -> dict:
        return {
            "store": self.root,
            "layout": "milvus",
            "model": self.model.name,
            "embed_dim": self.model.embed_dim,
            "images": self.count("image"),
            "texts": self.count("text"),
            "failures": 0,
        }

    def search(self, kind: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        results = self.client.search(
            self.collection.name,
            data=[q.tolist() for q in np.atleast_2d(queries).astype(np.float32)],
            limit=int(k),
            filter=f'kind == "{kind}"',
            output_fields=["id"],
            search_params=_search_params(self.collection.index_type, k),
            consistency_level="Strong",
        )
        scores = np.full((len(results), k), -np.inf, np.float32)
        ids = np.full((len(results), k), -1, np.int64)
        for row, hits in enumerate(results):
            for column, hit in enumerate(hits[:k]):
                scores[row, column] = hit["distance"]
                ids[row, column] = hit["id"]
        return scores, ids


def _item(row: dict) -> Item:
    kind = row["kind"]
    return Item(
        id=int(row["id"]),
        key=row["key"],
        kind=kind,
        path=row["path"] or None,
        size=int(row["size"]) if row["size"] >= 0 else None,
        mtime_ns=None,
        sha256=row["sha256"] or None,
        caption=row["caption"] if kind == "text" else None,
    )


# -- the writer: store -> collection ---------------------------------------------------------------
def _state_key(collection: MilvusCollection) -> str:
    return f"milvus:{collection.uri}/{collection.name}"


def sync_to_milvus(store, collection: MilvusCollection, progress: bool = False) -> dict:
    """Bring ``collection`` up to date with ``store`` (opened for writing); returns what was done."""
    pymilvus = require("pymilvus", "milvus", "cliplab index --milvus")
    client = collection.client()
    name = collection.name
    try:
        if not client.has_collection(name):
            schema = pymilvus.CollectionSchema(
                _schema(pymilvus, store.model.embed_dim),
                description=json.dumps({"cliplab": 1, "model": store.model.to_json()}),
            )
            index = client.prepare_index_params()
            index.add_index(
                field_name="vector",
                index_type=collection.index_type,
                metric_type="IP",
                params=_index_params(collection.index_type),
            )
            client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        else:
            description = client.describe_collection(name).get("description", "")
            recorded = ModelIdentity.from_json(json.loads(description)["model"])
            if recorded.fingerprint != store.model.fingerprint:
                raise ModelMismatchError(
                    f"Milvus collection {name!r} holds vectors of model {recorded.name!r}, not the store's "
                    f"{store.model.name!r}: use another --collection"
                )
        client.load_collection(name)
        state = json.loads(store.meta(_state_key(collection)) or "{}")
        store.ensure_removals_log()
        seq_now = store.removal_seq()
        deleted = 0
        if "max_id" not in state:
            # first sync: drop whatever the collection holds that the store does not
            present = set(store.ids("image").tolist()) | set(store.ids("text").tolist())
            stale = [int(r["id"]) for r in client.query(name, filter="id >= 0", output_fields=["id"], limit=16384)]
            stale = [i for i in stale if i not in present]
        else:
            stale = []
            for kind in ("image", "text"):
                stale += store.removals(kind, state["removal_seq"])[0].tolist()
        for start in range(0, len(stale), _BATCH):
            client.delete(name, ids=stale[start : start + _BATCH])
            deleted += len(stale[start : start + _BATCH])
        after = int(state.get("max_id", 0))
        upserted = 0
        for kind in ("image", "text"):
            ids = store.ids_after(kind, after)
            bar = tqdm(total=len(ids), unit=kind, desc=f"to Milvus: {kind}s", disable=not progress or not len(ids))
            for chunk in (ids[i : i + _BATCH] for i in range(0, len(ids), _BATCH)):
                got, vectors = store.vectors(kind, after_id=int(chunk[0]) - 1, up_to_id=int(chunk[-1]))
                items = store.items(got)
                rows = []
                for item_id, vector in zip(got, vectors):
                    item = items[int(item_id)]
                    rows.append(
                        {
                            "id": item.id,
                            "kind": item.kind,
                            "key": item.key[: MAX_TEXT * 4],
                            "path": (item.path or "")[: MAX_TEXT * 4],
                            "caption": (item.caption or "")[: MAX_TEXT * 4],
                            "size": -1 if item.size is None else int(item.size),
                            "sha256": item.sha256 or "",
                            "vector": vector.tolist(),
                        }
                    )
                if rows:
                    client.upsert(name, rows)
                    upserted += len(rows)
                bar.update(len(chunk))
            bar.close()
        client.flush(name)
        store.set_meta(_state_key(collection), json.dumps({"max_id": store.max_id(), "removal_seq": seq_now}))
        return {"collection": name, "upserted": upserted, "deleted": deleted}
    finally:
        client.close()
