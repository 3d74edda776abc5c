"""The training loop end to end on real (small) data: it learns, resumes exactly after kill -9,
and its options (accumulation, locking, SigLIP, patch dropout) run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import random_model
from PIL import Image, ImageDraw

from cliplab.checkpoints import read_checkpoint, write_checkpoint
from cliplab.model import get_preset
from cliplab.train.config import load_config
from cliplab.train.loop import train

COLORS = ["red", "green", "blue", "orange", "purple", "black"]
SHAPES = ["circle", "square", "triangle"]


def make_shapes_dataset(folder: Path, copies: int = 3) -> Path:
    """Coloured shapes at jittered positions, captioned with their colour and shape."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,caption"]
    for color in COLORS:
        for shape in SHAPES:
            for k in range(copies):
                image = Image.new("RGB", (48, 48), "white")
                draw = ImageDraw.Draw(image)
                x, y = 4 + 3 * k, 6 + 2 * k
                box = (x, y, x + 30, y + 30)
                if shape == "circle":
                    draw.ellipse(box, fill=color)
                elif shape == "square":
                    draw.rectangle(box, fill=color)
                else:
                    draw.polygon([(x + 15, y), (x, y + 30), (x + 30, y + 30)], fill=color)
                name = f"{color}_{shape}_{k}.png"
                image.save(folder / name)
                rows.append(f"{name},a {color} {shape}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def write_config(tmp_path: Path, csv: Path, **train) -> Path:
    settings = {
        "batch_size": 8,
        "steps": 8,
        "lr": 2e-3,
        "warmup_steps": 2,
        "precision": "fp32",
        "checkpoint_every": 2,
        "log_every": 1,
        "seed": 3,
        **train,
    }
    lines = [
        "[model]",
        'arch = "ViT-nano"',
        "image_size = 32",
        "[data]",
        f'train = [["{csv}", 1.0]]',
        "workers = 1",
        "[train]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def losses(run: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]


@pytest.fixture(scope="module")
def shapes_csv(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.mark.slow
def test_run_killed_with_sigkill_and_resumed_matches_the_uninterrupted_run(shapes_csv, tmp_path):
    config = write_config(tmp_path, shapes_csv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs in the same setting, for bitwise-equal arithmetic
    straight = [sys.executable, "-m", "cliplab", "train", str(config), "--out", str(tmp_path / "straight")]
    assert subprocess.run(straight, env=env, capture_output=True, timeout=300).returncode == 0

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "cliplab", "train", str(config), "--out", str(run)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # kill once step 3 is logged (state saved at 2)
        if (run / "metrics.jsonl").exists() and any(s >= 3 for s, _ in losses(run)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "model").exists()

    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    resumed_curve, straight_curve = losses(run), losses(tmp_path / "straight")
    assert [s for s, _ in resumed_curve] == [s for s, _ in straight_curve] == list(range(1, 9))
    assert [v for _, v in resumed_curve] == [v for _, v in straight_curve]
    a = read_checkpoint(tmp_path / "straight" / "model").state_dict
    b = read_checkpoint(run / "model").state_dict
    assert all(torch.equal(a[key], b[key]) for key in a), "resumed weights differ from the uninterrupted run's"


@pytest.mark.slow
def test_short_run_learns_the_shapes(shapes_csv, tmp_path):
    """Training lowers the loss well below its start and lifts retrieval far above chance."""
    from cliplab.api import Pipeline
    from cliplab.evaluate import retrieval_eval

    config = load_config(
        write_config(tmp_path, shapes_csv, steps=60, batch_size=16, checkpoint_every=60, lr=3e-3, precision="bf16")
    )
    result = train(config, tmp_path / "run", progress=False)
    curve = losses(tmp_path / "run")
    assert curve[-1][1] < 0.75 * curve[0][1], curve
    pipeline = Pipeline(read_and_build(tmp_path / "run" / "model"), device="cpu")
    items = [
        {"image": str(shapes_csv.parent / f"{c}_{s}_0.png"), "caption": f"a {c} {s}"} for c in COLORS for s in SHAPES
    ]
    recall = retrieval_eval(pipeline, items)
    print(recall)
    assert recall["text_to_image_R@1"] >= 3 * recall["chance_R@1"], recall
    assert result.samples_per_second > 0


def read_and_build(folder):
    from cliplab.checkpoints import build_model

    return build_model(read_checkpoint(folder))


@pytest.mark.parametrize(
    "options",
    [
        {"accum_freq": 2},
        {"loss": "siglip"},
        {"lock_image": True},
        {"lock_text": True, "patch_dropout": 0.5, "grad_checkpointing": True},
        {"local_loss": True, "precision": "bf16"},
    ],
)
def test_training_options_run_and_keep_locked_towers_fixed(options, shapes_csv, tmp_path):
    config = load_config(write_config(tmp_path, shapes_csv, steps=2, checkpoint_every=2, **options))
    torch.manual_seed(config.train.seed)
    from cliplab.train.loop import build_model

    initial = build_model(config)[0].state_dict()
    train(config, tmp_path / "run", progress=False)
    final = read_checkpoint(tmp_path / "run" / "model").state_dict
    visual_same = all(torch.equal(initial[k], final[k]) for k in initial if k.startswith("visual."))
    text_same = all(
        torch.equal(initial[k], final[k]) for k in initial if not k.startswith("visual.") and k != "logit_scale"
    )
    assert visual_same == bool(options.get("lock_image"))
    assert text_same == bool(options.get("lock_text"))


@pytest.mark.slow
def test_short_run_on_a_corpus_slice_lifts_held_out_retrieval_far_above_chance(tmp_path_factory):
    """Train briefly on a slice of the real sample corpus; retrieve the held-out OpenMoji drawings
    (a style never trained on) from their captions far better than chance."""
    from cliplab.api import Pipeline
    from cliplab.data.corpus import CorpusSourcesError, build_sample_corpus, find_sources
    from cliplab.evaluate import read_items, retrieval_eval

    try:
        find_sources()
    except CorpusSourcesError as error:
        pytest.skip(f"corpus sources cannot be installed here: {error}")
    folder = tmp_path_factory.mktemp("corpus_slice")
    build_sample_corpus(folder, image_size=64, progress=False, limit=120)
    config = load_config(
        None,
        [
            f'data.train=[["{folder / "train.jsonl"}", 1.0]]',
            "data.workers=1",
            'model.arch="ViT-nano"',
            "train.batch_size=64",
            "train.steps=80",
            "train.lr=2e-3",
            "train.warmup_steps=10",
            "train.seed=0",
            "train.checkpoint_every=80",
            "train.log_every=10",
        ],
    )
    run = tmp_path_factory.mktemp("run")
    train(config, run, progress=False)
    model = read_and_build(run / "model")
    held_out = read_items(folder / "zeroshot_test.jsonl")
    recall = retrieval_eval(Pipeline(model, device="cpu"), held_out)
    print({k: round(v, 3) for k, v in recall.items()})
    assert recall["text_to_image_R@10"] >= 3 * recall["chance_R@10"], recall
    assert recall["image_to_text_R@10"] >= 3 * recall["chance_R@10"], recall


def test_fine_tuning_starts_from_the_given_checkpoint(shapes_csv, tmp_path):
    """init_from loads any checkpoint; with a zero learning rate the weights stay exactly its own."""
    from cliplab.checkpoints import write_checkpoint
    from cliplab.model import get_preset

    torch.manual_seed(123)
    config = get_preset("ViT-nano")
    config.vision.image_size = 32
    from cliplab.model import CLIP

    start = CLIP(config)
    write_checkpoint(start, tmp_path / "start", "open_clip")
    cfg = load_config(
        write_config(tmp_path, shapes_csv, steps=2, lr=0.0, checkpoint_every=2),
        [f'model.init_from="{tmp_path / "start"}"'],
    )
    train(cfg, tmp_path / "run", progress=False)
    final = read_checkpoint(tmp_path / "run" / "model").state_dict
    assert all(torch.equal(final[k], v) for k, v in start.state_dict().items())


def test_resume_with_a_different_data_order_is_refused(shapes_csv, tmp_path):
    train(
        load_config(write_config(tmp_path, shapes_csv, steps=2, checkpoint_every=1)),
        tmp_path / "run",
        progress=False,
        stop_after_steps=1,
    )
    changed = load_config(write_config(tmp_path, shapes_csv, steps=2, checkpoint_every=1, batch_size=4))
    with pytest.raises(ValueError, match="train.batch_size: 8 -> 4"):
        train(changed, tmp_path / "run", resume=True, progress=False)


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_and_saves_once(shapes_csv, tmp_path):
    config = write_config(tmp_path, shapes_csv, steps=3, checkpoint_every=3, local_loss=True, accum_freq=2)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "cliplab.cli",
        "train",
        str(config),
        "--out",
        str(tmp_path / "ddp"),
        "--json",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [s for s, _ in losses(tmp_path / "ddp")] == [1, 2, 3]
    assert read_checkpoint(tmp_path / "ddp" / "model").config.embed_dim == 128


@pytest.mark.slow
def test_an_earlier_run_is_never_overwritten_silently_and_a_finished_run_resumes_to_nothing(
    shapes_csv, tmp_path, capsys
):
    from cliplab.cli import main

    config = str(write_config(tmp_path, shapes_csv, steps=2, checkpoint_every=2))
    run = str(tmp_path / "run")
    assert main(["train", config, "--out", run, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["steps"] == first["steps_this_run"] == 2
    assert main(["train", config, "--out", run]) == 1
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert main(["train", config, "--out", run, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already finished its 2 steps; nothing to do" in out and "nan" not in out
    assert main(["train", config, "--out", run, "--overwrite", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["steps_this_run"] == 2 and again["final_loss"] == pytest.approx(first["final_loss"], abs=1e-6)


@pytest.mark.slow
def test_a_warmup_longer_than_the_run_is_flagged(shapes_csv, tmp_path, capsys):
    config = load_config(write_config(tmp_path, shapes_csv, steps=4, warmup_steps=10))
    assert any("never reaches train.lr" in w for w in config.warnings())
    assert load_config(write_config(tmp_path, shapes_csv, steps=4, warmup_steps=4)).warnings() == []
    result = train(config, tmp_path / "run", progress=False)
    assert "never reaches train.lr" in capsys.readouterr().err and result.warnings


def test_eval_reads_csv_tables_as_training_does(shapes_csv, tmp_path, capsys):
    from cliplab.cli import main

    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    assert main(["eval", "--model", str(tmp_path / "model"), "--retrieval", str(shapes_csv), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["retrieval"]
    assert result["pairs"] == len(shapes_csv.read_text().splitlines()) - 1 and 0 <= result["text_to_image_R@10"] <= 1
    assert main(["eval", "--model", str(tmp_path / "model"), "--zeroshot", str(shapes_csv)]) == 1
    assert "has no 'concept' field" in capsys.readouterr().err
