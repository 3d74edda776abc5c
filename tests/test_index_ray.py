"""The Ray path: a local Ray instance decodes and embeds, the store ingests its shards; the result must
equal the single-process indexer's."""

from __future__ import annotations

import numpy as np
import pytest

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.index import Store, index_paths
from cliplab.model import get_preset
from conftest import random_model
from test_index import write_images

ray = pytest.importorskip("ray")


def test_ray_indexing_gives_the_single_process_vectors(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), tmp_path / "model", "cliplab")
    pipeline = cliplab.load(tmp_path / "model", device="cpu")
    photos = tmp_path / "photos"
    write_images(photos, 40)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    from cliplab.index.distributed import index_with_ray

    report = index_with_ray(pipeline, tmp_path / "ray-store", [photos], address="local", batch_size=8,
                            progress=False, actors=2)
    assert (report.embedded, report.total_images, len(report.failed)) == (40, 40, 1)
    assert not ray.is_initialized()  # the instance it started is shut down again
    assert not any((tmp_path / "ray-store" / "shards").glob("*/*.parquet"))  # shards ingested and removed

    index_paths(pipeline, tmp_path / "local-store", [photos], workers=0, progress=False)
    with Store(tmp_path / "ray-store") as distributed, Store(tmp_path / "local-store") as local:
        got = {i.key: (i.sha256, distributed.vector(i.id)) for i in distributed.iter_items()}
        want = {i.key: (i.sha256, local.vector(i.id)) for i in local.iter_items()}
        assert got.keys() == want.keys()
        assert all(got[k][0] == want[k][0] for k in got)
        assert max(float(np.abs(got[k][1] - want[k][1]).max()) for k in got) < 1e-5
        assert [f["path"] for f in distributed.failures()] == [f["path"] for f in local.failures()]

    again = index_with_ray(pipeline, tmp_path / "ray-store", [photos], address="local", progress=False)
    assert (again.embedded, again.unchanged) == (0, 40)  # incremental like the local path
