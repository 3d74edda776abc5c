"""The Ray path: Ray decodes and embeds, the store ingests the shards of results streamed back; the result must
equal the single-process indexer's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import random_model
from test_index import write_images

import cliplab
from cliplab.checkpoints import write_checkpoint
from cliplab.index import Store, index_paths
from cliplab.model import get_preset

ray = pytest.importorskip("ray")


pytestmark = pytest.mark.slow  # minutes of real kills, loads and clusters


def test_ray_indexing_gives_the_single_process_vectors(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), tmp_path / "model", "cliplab")
    pipeline = cliplab.load(tmp_path / "model", device="cpu")
    photos = tmp_path / "photos"
    write_images(photos, 40)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    from cliplab.index.distributed import index_with_ray

    report = index_with_ray(
        pipeline, tmp_path / "ray-store", [photos], address="local", batch_size=8, progress=False, actors=2
    )
    assert (report.embedded, report.total_images, len(report.failed)) == (40, 40, 1)
    assert not ray.is_initialized()  # the instance it started is shut down again

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


@pytest.fixture
def two_node_cluster():
    """A Ray cluster of two nodes on this machine, started as the README starts one (`ray start --head`,
    then `ray start --address` for a worker node), with token authentication. Yields the address and the
    environment that every Ray process, `cliplab index` included, needs to join it."""
    import os
    import secrets
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the `ray` command is not installed")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    address = "127.0.0.1:6391"
    try:
        for args in (["--head", "--port", address.split(":")[1], "--include-dashboard=false"], ["--address", address]):
            subprocess.run(
                [ray_cli, "start", *args, "--num-cpus", "1", "--disable-usage-stats"],
                env=env,
                check=True,
                capture_output=True,
                timeout=180,
            )
        yield address, env
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=180)


def test_cli_on_a_two_node_cluster_with_a_relative_store_path(tmp_path, two_node_cluster):
    """`cliplab index --ray ADDRESS` on a cluster it did not start: refused with a clear error without the
    cluster's token, then run with it. Each node has one CPU and the actor pool
    one actor per CPU, so both nodes embed. The embeddings come back to the command's process, so a relative
    store path (which the workers, started elsewhere, would resolve against their own folders) gets them all."""
    import subprocess
    import sys

    address, env = two_node_cluster
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=1), tmp_path / "model", "cliplab")
    write_images(tmp_path / "photos", 24)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    command = [
        sys.executable,
        "-m",
        "cliplab",
        "index",
        "photos",
        "--store",
        "store",
        "--model",
        "model",
        "--ray",
        address,
        "--batch-size",
        "4",
        "--json",
    ]
    without_token = {name: value for name, value in env.items() if not name.startswith("RAY_AUTH")}
    refused = subprocess.run(command, cwd=tmp_path, env=without_token, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "cannot join the Ray cluster" in refused.stderr and "RAY_AUTH_MODE=token" in refused.stderr
    assert "Traceback" not in refused.stderr

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["embedded"], report["total_images"], len(report["failed"])) == (24, 24, 1)

    pipeline = cliplab.load(tmp_path / "model", device="cpu")
    index_paths(pipeline, tmp_path / "local-store", [tmp_path / "photos"], workers=0, progress=False)
    with Store(tmp_path / "store") as distributed, Store(tmp_path / "local-store") as local:
        got = {i.key: distributed.vector(i.id) for i in distributed.iter_items()}
        want = {i.key: local.vector(i.id) for i in local.iter_items()}
        assert got.keys() == want.keys()
        assert max(float(np.abs(got[k] - want[k]).max()) for k in got) < 1e-5
