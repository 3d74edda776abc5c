"""The cliplab command, run in-process through its entry point and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_model
from PIL import Image

from cliplab.checkpoints import write_checkpoint
from cliplab.cli import main
from cliplab.model import get_preset


@pytest.fixture
def model_dir(tmp_path):
    write_checkpoint(random_model(get_preset("ViT-nano")), tmp_path / "model", "cliplab")
    return str(tmp_path / "model")


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_classify_json(model_dir, image_files, capsys):
    assert (
        main(
            [
                "classify",
                *image_files,
                "--labels",
                "a cat,a dog,a bus",
                "--model",
                model_dir,
                "--json",
                "--templates",
                "photo",
                "-k",
                "2",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result] == image_files
    for r in result:
        assert len(r["predictions"]) == 2
        assert r["predictions"][0]["probability"] >= r["predictions"][1]["probability"]


def test_classify_with_saved_classifier_gives_the_same_answer(model_dir, image_files, tmp_path, capsys):
    args = ["--model", model_dir, "--json"]
    main(
        [
            "classify",
            *image_files,
            "--labels",
            "a cat,a dog",
            "--save-classifier",
            str(tmp_path / "c.safetensors"),
            *args,
        ]
    )
    first = json.loads(capsys.readouterr().out)
    main(["classify", *image_files, "--classifier", str(tmp_path / "c.safetensors"), *args])
    assert json.loads(capsys.readouterr().out) == first


def test_embed_images_to_npy_and_texts_to_parquet(model_dir, image_files, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["embed", "--images", *image_files, "--out", str(tmp_path / "v.npy"), "--model", model_dir]) == 0
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 128)
    assert (tmp_path / "v.ids.txt").read_text().split() == image_files
    assert main(["embed", "--texts", "a cat", "a dog", "--out", str(tmp_path / "t.parquet"), "--model", model_dir]) == 0
    table = pq.read_table(tmp_path / "t.parquet").to_pydict()
    assert table["id"] == ["a cat", "a dog"] and len(table["embedding"][0]) == 128


def test_similarity_plot_and_json(model_dir, image_files, tmp_path, capsys):
    plot = tmp_path / "m.png"
    assert (
        main(
            [
                "similarity",
                "--images",
                *image_files[:2],
                "--texts",
                "a cat",
                "a dog",
                "a bus",
                "--plot",
                str(plot),
                "--json",
                "--model",
                model_dir,
            ]
        )
        == 0
    )
    matrix = np.array(json.loads(capsys.readouterr().out)["cosine"])
    assert matrix.shape == (2, 3) and np.all(np.abs(matrix) <= 1)
    assert Image.open(plot).size[0] > 200


def test_convert_and_info(model_dir, tmp_path, capsys):
    assert main(["convert", model_dir, str(tmp_path / "hf"), "--to", "huggingface"]) == 0
    assert main(["info", str(tmp_path / "hf"), "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[out.index("{") :])
    assert info["format"] == "huggingface" and info["config"]["embed_dim"] == 128


@pytest.mark.parametrize(
    "argv,message",
    [
        (["classify", "missing.jpg", "--labels", "a,b"], "no such image file: missing.jpg"),
        (["info", "nowhere/model.pt"], "neither an existing file"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_classify_needs_two_labels(model_dir, image_files, capsys):
    assert main(["classify", image_files[0], "--labels", "a cat", "--model", model_dir]) == 1
    assert "two or more labels" in capsys.readouterr().err


def test_console_script_help_runs_as_a_process():
    result = subprocess.run([sys.executable, "-m", "cliplab", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("classify", "embed", "similarity", "convert", "info", "train", "eval", "plot-run", "data", "demo"):
        assert command in result.stdout


def test_eval_and_plot_run_commands(model_dir, image_files, tmp_path, capsys):
    items = [
        {"image": path, "concept": concept, "caption": f"a photo of a {concept}"}
        for path, concept in zip(image_files, ["cat", "dog", "bus"])
    ]
    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    assert main(["eval", "--model", model_dir, "--zeroshot", str(data), "--retrieval", str(data), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["zeroshot"]["classes"] == 3 and 0 <= results["zeroshot"]["top1"] <= 1
    assert results["retrieval"]["chance_R@1"] == pytest.approx(1 / 3)

    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "loss": 3.0 / s, "lr": 1e-3, "logit_scale": 14.3 + s} for s in range(1, 6)]
    records.append({"step": 5, "eval": {"zeroshot": {"top1": 0.2, "top5": 0.5}}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot-run", str(run)]) == 0
    assert Image.open(run / "curves.png").size[0] > 300


def test_train_with_a_bad_config_key_names_it(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[train]\nstepz = 3\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 1
    assert "stepz" in capsys.readouterr().err


def test_a_saved_classifier_refuses_another_model_of_the_same_width(model_dir, image_files, tmp_path, capsys):
    """Classifier files record the model's fingerprint, as stores do: applying one to another model of the
    same embedding width is an error that names both, not silently wrong predictions."""
    other = tmp_path / "other"
    write_checkpoint(random_model(get_preset("ViT-nano"), seed=5), other, "cliplab")
    saved = str(tmp_path / "pets.safetensors")
    labels = ["--labels", "a cat,a dog", "--save-classifier", saved, "--model", model_dir]
    assert main(["classify", image_files[0], *labels]) == 0
    assert main(["classify", image_files[0], "--classifier", saved, "--model", model_dir]) == 0
    capsys.readouterr()
    assert main(["classify", image_files[0], "--classifier", saved, "--model", str(other)]) == 1
    error = capsys.readouterr().err
    assert "this classifier was made with model" in error and str(Path(model_dir).resolve()) in error


def test_a_mistyped_option_is_reported_by_its_command_with_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", "a.jpg", "--lables", "a,b"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cliplab classify") and "--lables -> --labels" in err
    with pytest.raises(SystemExit):
        main(["clasify", "a.jpg"])
    assert "did you mean 'classify'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "pak", "x", "y"])
    assert "did you mean 'pack'?" in capsys.readouterr().err


def test_version_and_help_state_defaults_and_examples(capsys):
    from cliplab import __version__
    from cliplab.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"cliplab {__version__}"
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, parser in commands.items():
        if name == "data":
            continue
        text = parser.format_help()
        assert "examples:" in text, name
    text = " ".join(commands["index"].format_help().split())
    assert "(default: 64)" in text and "(default: the store's model, else cliplab-lite)" in text


def test_a_folder_where_an_image_is_expected_is_named_as_a_folder(model_dir, tmp_path, capsys):
    assert main(["classify", str(tmp_path), "--labels", "a,b", "--model", model_dir]) == 1
    assert "is a folder, not an image file" in capsys.readouterr().err


def test_unknown_model_names_get_suggestions_and_named_models_work_everywhere(model_dir, tmp_path, capsys, monkeypatch):
    from cliplab.paths import models_dir

    assert main(["info", "ViT-B32/openai"]) == 1
    assert "Did you mean 'ViT-B-32/openai'" in capsys.readouterr().err
    import shutil

    shutil.copytree(model_dir, models_dir() / "my-model")
    assert main(["info", "my-model", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "cliplab"
    assert main(["info", "my-modle"]) == 1
    assert "Did you mean 'my-model'" in capsys.readouterr().err
