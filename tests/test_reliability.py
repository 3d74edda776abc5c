"""The fast subset of ``make reliability``: every bad input through every entry point, kill -9 during
indexing and training, a full disk, two writers, and a short load test of the service."""

from __future__ import annotations

import os

import pytest
from conftest import random_model

from cliplab.checkpoints import write_checkpoint
from cliplab.model import get_preset
from reliability import bad_inputs, entry_points, faults, load

pytestmark = pytest.mark.slow  # minutes of real kills, loads and clusters


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nano"
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=4), path, "cliplab")
    return str(path)


def test_every_bad_input_is_refused_clearly_or_skipped_and_nothing_is_lost(model, tmp_path):
    entries = bad_inputs.build(tmp_path / "inputs")
    assert {e.kind for e in entries} == {"image", "text", "checkpoint"} and len(entries) >= 35
    rows = entry_points.run_all(entries, model, tmp_path / "work")
    failures = {r.entry.name: r.outcomes for r in rows if not r.passed}
    assert not failures
    summary = (tmp_path / "work" / "bad_inputs_summary.json").read_text()
    assert '"nothing_lost": true' in summary and '"code_ran": false' in summary
    assert not (tmp_path / "inputs" / "CODE_WAS_RUN").exists()
    by_name = {r.entry.name: r for r in rows}
    assert by_name["bomb.png"].outcomes["index"].startswith("skipped: refusing to decode")
    assert (
        by_name["runs-code.pt"].outcomes["load"].startswith("error:")
        and "not unpickled" in by_name["runs-code.pt"].outcomes["load"]
    )


def test_indexing_survives_kill_9_and_ends_equal_to_a_clean_run(model, tmp_path):
    result = faults.kill_indexing(model, tmp_path, kills=3, photos=150, max_delay_s=5.0)
    assert result["lost"] == 0 and result["final_exit"] == 0
    assert result["equals_clean_run"] and result["final_items"] == 150


def test_training_survives_kill_9_and_ends_bitwise_equal(tmp_path):
    result = faults.kill_training(tmp_path, kills=2, steps=12, max_delay_s=6.0)
    assert result["final_exit"] == 0 and result["same_loss_curve"] and result["same_final_weights"]


def test_second_indexer_is_refused_and_the_store_ends_complete(model, tmp_path):
    result = faults.two_writers(model, tmp_path)
    assert result["refused_clearly"] or result["second_exit"] == 0  # 0 only if the first had already finished
    assert result["waiting_exit"] == 0 and result["lost"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_gives_a_clear_error_and_an_intact_store(model, tmp_path):
    result = faults.full_disk(model, tmp_path)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["full_run_exit"] == 1 and result["clear_message"], result["message"]
    assert result["store_opens"] and result["lost"] == 0 and result["items_after"] >= result["items_before"]


def test_service_under_a_short_load_answers_everything(model, tmp_path):
    from test_index import write_images

    import cliplab
    from cliplab.index import index_paths

    write_images(tmp_path / "photos", 60)
    index_paths(cliplab.load(model), tmp_path / "store", [tmp_path / "photos"], workers=0, progress=False)
    server, url = load.start_server(tmp_path / "store", model)
    try:
        result = load.run_load(url, server.pid, clients=4, seconds=4.0)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert result["errors"] == 0 and result["requests"] > 10, result
