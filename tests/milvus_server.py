"""A real Milvus standalone server (PyPI package ``milvus``, 2.3) for the tests, on loopback.

Every component is told to advertise 127.0.0.1, so all traffic between them and with the tests stays
on the loopback interface; the client port is probed on 127.0.0.1 and the next free one taken.
Milvus 2.3's gRPC servers bind every interface (their address is not configurable), so they are also
reachable from outside while the tests run, on a machine that lets traffic in."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode", "dataCoord", "dataNode")


@contextlib.contextmanager
def milvus_server(folder: Path):
    milvus = pytest.importorskip("milvus", reason="the Milvus tests need the 'milvus' package (pip install '.[test]')")
    pytest.importorskip("pymilvus")
    config = milvus.MilvusServerConfig()
    for component in COMPONENTS:
        config.set(f"{component}.ip", "127.0.0.1")
    server = milvus.MilvusServer(config)
    server.set_base_dir(str(folder))
    server.start()  # waits until /healthz answers (at most 180 s)
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
