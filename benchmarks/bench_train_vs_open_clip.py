"""Training throughput and quality: cliplab's trainer vs OpenCLIP's own trainer (open_clip_train),
same data, same model, same hyper-parameters, same wall-clock budget, on this machine (CPU).

    python benchmarks/bench_train_vs_open_clip.py --corpus DIR [--budget-seconds 180] [--batch-size 128]
        [--precision bf16|fp32] [--work DIR]

Needs ``pip install 'open-clip-torch[training]'`` (the ``open_clip_train`` package and webdataset).
``DIR`` is a corpus written by ``cliplab data sample-corpus`` (``train.jsonl``,
``zeroshot_test.jsonl`` + ``concepts.json``, ``retrieval_test.jsonl``).

Protocol
--------
1. **Data.** ``DIR/train.jsonl`` is packed once with cliplab's packer (``pack_shards``, 1000
   samples a shard, original PNG bytes, ``KEY.png`` + ``KEY.txt``). Both trainers read these
   same WebDataset shards, drawing *shards with replacement* (OpenCLIP ``--dataset-resampled``,
   cliplab ``data.resample = true``): that is the only way OpenCLIP trains an exact number of
   steps that is not a whole number of epochs, and cliplab is set to match. cliplab's caption
   filter is turned off (OpenCLIP has none). Each uses its own shuffle buffer (OpenCLIP 5000,
   cliplab 1000 samples).
2. **Model.** cliplab's ``ViT-nano`` preset (ViT 64 px / patch 8 / width 128 / 4 layers / 2 heads;
   text width 128 / 4 layers / 2 heads / context 77; embed 128; GELU). OpenCLIP gets the same
   architecture as an ``open_clip_config.json`` written by cliplab's ``config_to_open_clip``,
   passed as ``--model local-dir:FOLDER`` (no weights in the folder: random init).
3. **Preprocessing.** Both resize the 96 px images to 64 px (bicubic) with OpenAI's mean/std
   and *no augmentation*: OpenCLIP's default ``RandomResizedCrop(scale=(0.9, 1))`` is turned
   into a whole-image resize with ``--aug-cfg scale=(1.0,1.0)`` so that both see the same pixels.
4. **Hyper-parameters.** Same batch size, lr, warmup steps, weight decay, AdamW betas
   (0.9, 0.98) / eps 1e-6 (both defaults for ViTs), no decay on gains/biases/temperature,
   warmup + cosine to 0, seed 0, one DataLoader worker each, the same precision (``bf16``:
   OpenCLIP ``--precision amp_bf16`` vs cliplab ``train.precision = "bf16"``, both CPU
   autocast to bfloat16, each system's best CPU setting; or ``fp32`` for both), one process,
   torch's default intra-op threads (= cores).
5. **Equal wall-clock budget.** Neither trainer can stop on a clock *and* finish its learning-rate
   schedule, and stopping mid-schedule (at high lr) would judge the model unfairly. So each
   system first runs a short calibration (``--calibration-steps``, default 30, logging every
   step); its steady-state seconds per step (after the first ``--skip-steps``) plus the time to
   reach that step give the number of steps its training loop can do in ``--budget-seconds``.
   The real run then trains exactly that many steps, a full warmup + cosine schedule, so each
   system spends ~the budget in its training loop. The time actually spent is reported: the
   loop (first step start to last step end, data start-up included) and the whole process
   (imports, model build, final checkpoint writes). A 30-step calibration on a shared 2-core
   machine is only good to ~10%, so the loops land within ~10% of the budget; samples/s do not
   depend on that, the quality rows do a little.
6. **Throughput** = samples / training-loop seconds of the real run (and the steady-state rate
   after ``--skip-steps``). OpenCLIP's per-step times come from its ``out.log``
   (``--log-every-n-steps 1``: ``batch_size / step samples/s``); cliplab's from
   ``metrics.jsonl`` (``log_every = 1``, elapsed ``time`` per step).
7. **Quality.** Both final models are evaluated by the same code, ``cliplab eval`` (prompt
   ensemble: its default templates), on the held-out sets: zero-shot top-1/top-5 over the
   classes in ``concepts.json`` (OpenMoji style, unseen in training) and image<->text
   recall@k on the held-out retrieval pairs. The OpenCLIP checkpoint (``epoch_1.pt``) is
   exported as an OpenCLIP folder (its ``open_clip_config.json`` + the state dict) so that
   cliplab reads the declared architecture and activation. Before that, the script checks
   that cliplab's forward pass of the OpenCLIP-trained weights matches OpenCLIP's own.

Everything is written under ``--work`` (default: a temporary folder, removed unless ``--keep``).
At the default budget the whole benchmark takes about 2 x (budget + calibration + start-up)
+ evaluation, i.e. ~7-8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


# ----------------------------------------------------------------------------- setup


def pack(corpus: Path, out: Path) -> tuple[str, int]:
    """Shards of ``corpus/train.jsonl``; returns (brace pattern, number of samples)."""
    from cliplab.data import pack_shards, read_pairs

    pairs = read_pairs(corpus / "train.jsonl")
    shards = sorted(out.glob("shard-*.tar"))
    if not shards:
        shards = pack_shards(pairs, out, samples_per_shard=1000, progress=False)
    last = len(shards) - 1
    return str(out / f"shard-{{000000..{last:06d}}}.tar"), len(pairs)


def write_open_clip_arch(folder: Path, arch: str) -> dict:
    from cliplab.checkpoints.open_clip import config_to_open_clip
    from cliplab.model import get_preset
    from cliplab.preprocess import MEAN, STD

    config = get_preset(arch)
    meta = {
        "model_cfg": config_to_open_clip(config),
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(meta, indent=2))
    return meta


def write_cliplab_config(path: Path, arch: str, pattern: str, a: argparse.Namespace) -> None:
    path.write_text(f"""[model]
arch = "{arch}"

[data]
train = [["{pattern}", 1.0]]
workers = {a.workers}
resample = true
caption_filter = false

[train]
batch_size = {a.batch_size}
steps = 1000
lr = {a.lr}
warmup_steps = {a.warmup_steps}
weight_decay = {a.wd}
betas = [0.9, 0.98]
eps = 1e-6
precision = "{a.precision}"
log_every = 1
seed = 0

[eval]
zeroshot = ""
retrieval = ""
""")


# ----------------------------------------------------------------------------- the two trainers


def open_clip_command(
    a: argparse.Namespace, arch_dir: Path, pattern: str, steps: int, logs: Path, name: str
) -> list[str]:
    return [
        PY,
        "-m",
        "open_clip_train.main",
        "--model",
        f"local-dir:{arch_dir}",
        "--dataset-type",
        "webdataset",
        "--train-data",
        pattern,
        "--dataset-resampled",
        "--train-num-samples",
        str(steps * a.batch_size),
        "--epochs",
        "1",
        "--batch-size",
        str(a.batch_size),
        "--lr",
        str(a.lr),
        "--warmup",
        str(a.warmup_steps),
        "--wd",
        str(a.wd),
        "--beta1",
        "0.9",
        "--beta2",
        "0.98",
        "--eps",
        "1e-6",
        "--precision",
        "amp_bf16" if a.precision == "bf16" else "fp32",
        "--aug-cfg",
        "scale=(1.0,1.0)",
        "--workers",
        str(a.workers),
        "--device",
        "cpu",
        "--seed",
        "0",
        "--logs",
        str(logs),
        "--name",
        name,
        "--log-every-n-steps",
        "1",
        "--save-frequency",
        "1",
        "--zeroshot-frequency",
        "0",
        "--val-frequency",
        "0",
        "--report-to",
        "",
    ]


def cliplab_command(a: argparse.Namespace, config: Path, steps: int, out: Path) -> list[str]:
    return [
        PY,
        "-m",
        "cliplab",
        "train",
        str(config),
        "--out",
        str(out),
        "--json",
        "--set",
        f"train.steps={steps}",
        "--set",
        f"train.checkpoint_every={steps}",
    ]


_OC_LINE = re.compile(
    r"Train Epoch: \d+ \[\s*(\d+)/\d+.*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+), ([\d.]+)/s.*?"
    r"Contrastive_loss: ([\d.]+)"
)


def open_clip_steps(log: Path, batch_size: int) -> list[dict]:
    """Per-step records from OpenCLIP's out.log: seconds of the step, its data wait, loss. (OpenCLIP
    resets its time meters after each log line, so with ``--log-every-n-steps 1`` each line's
    "Data (t)" is that step's wait for the loader.)"""
    steps = []
    for line in log.read_text().splitlines():
        m = _OC_LINE.search(line)
        if m:
            steps.append(
                {"seconds": batch_size / float(m.group(4)), "data_wait": float(m.group(2)), "loss": float(m.group(5))}
            )
    return steps


def cliplab_steps(metrics: Path) -> list[dict]:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r and "time" in r]
    steps, previous = [], 0.0
    for r in records:  # log_every = 1: one record a step, ``time`` elapsed since the loop started
        steps.append({"seconds": r["time"] - previous, "loss": r["loss"]})
        previous = r["time"]
    return steps


def summarise(steps: list[dict], batch_size: int, skip: int) -> dict:
    seconds = [s["seconds"] for s in steps]
    loop = sum(seconds)
    steady = seconds[skip:] or seconds
    return {
        "steps": len(steps),
        "loop_seconds": loop,
        "samples_per_second": len(steps) * batch_size / loop,
        "steady_step_seconds": statistics.fmean(steady),
        "startup_loop_seconds": sum(seconds[:skip]),
        "steady_samples_per_second": batch_size / statistics.fmean(steady),
        "final_loss": statistics.fmean(s["loss"] for s in steps[-10:]),
    }


def run(cmd: list[str], log_file: Path) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"command failed ({proc.returncode}); last lines of {log_file}:\n"
            + "\n".join(log_file.read_text().splitlines()[-30:])
        )
    return seconds


def train_open_clip(a, work: Path, arch_dir: Path, pattern: str, steps: int, tag: str) -> tuple[dict, float, Path]:
    logs = work / "open_clip_logs"
    shutil.rmtree(logs / tag, ignore_errors=True)
    wall = run(open_clip_command(a, arch_dir, pattern, steps, logs, tag), work / f"open_clip_{tag}.log")
    records = open_clip_steps(logs / tag / "out.log", a.batch_size)
    if len(records) != steps:
        sys.exit(f"OpenCLIP logged {len(records)} steps, expected {steps}: see {logs / tag / 'out.log'}")
    return summarise(records, a.batch_size, a.skip_steps), wall, logs / tag / "checkpoints" / "epoch_1.pt"


def train_cliplab(a, work: Path, config: Path, steps: int, tag: str) -> tuple[dict, float, Path]:
    out = work / f"cliplab_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    wall = run(cliplab_command(a, config, steps, out), work / f"cliplab_{tag}.log")
    records = cliplab_steps(out / "metrics.jsonl")
    if len(records) != steps:
        sys.exit(f"cliplab logged {len(records)} steps, expected {steps}: see {out / 'metrics.jsonl'}")
    return summarise(records, a.batch_size, a.skip_steps), wall, out / "model"


def steps_for_budget(calibration: dict, budget: float, skip: int) -> int:
    """Steps whose loop time is ~budget: the calibration's first ``skip`` steps (data start-up
    included) then its steady rate."""
    rest = budget - calibration["startup_loop_seconds"]
    return max(skip + 1, skip + int(rest / calibration["steady_step_seconds"]))


# ----------------------------------------------------------------------------- evaluation


def export_open_clip(checkpoint: Path, arch_dir: Path, dest: Path) -> Path:
    """epoch_K.pt -> an OpenCLIP folder (config + weights) that cliplab (and open_clip) load."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(arch_dir / "open_clip_config.json", dest / "open_clip_config.json")
    torch.save(state, dest / "open_clip_pytorch_model.bin")
    return dest


def check_same_forward(folder: Path, corpus: Path) -> float:
    """Max |difference| of normalised features between OpenCLIP's and cliplab's forward pass of the
    OpenCLIP-trained weights, on a few held-out images and captions (same pixels, same tokens)."""
    import open_clip
    import torch
    import torch.nn.functional as F

    from cliplab import load
    from cliplab.evaluate import read_items

    items = read_items(corpus / "retrieval_test.jsonl")[:8]
    pipeline = load(str(folder), device="cpu")
    oc_model = open_clip.create_model(f"local-dir:{folder}", device="cpu").eval()
    oc_tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    pixels = pipeline.preprocess.batch([item["image"] for item in items])
    captions = [item["caption"] for item in items]
    tokens = pipeline.tokenize(captions)
    if not torch.equal(tokens, oc_tokenizer(captions)):
        print("note: cliplab's and OpenCLIP's tokenizers differ on the probe captions")
    with torch.inference_mode():
        diffs = [
            (
                F.normalize(pipeline.encode_image(pixels).float(), dim=-1)
                - F.normalize(oc_model.encode_image(pixels).float(), dim=-1)
            )
            .abs()
            .max(),
            (
                F.normalize(pipeline.encode_text(tokens).float(), dim=-1)
                - F.normalize(oc_model.encode_text(tokens).float(), dim=-1)
            )
            .abs()
            .max(),
        ]
    return float(max(diffs))


def evaluate(model: Path, corpus: Path, work: Path, tag: str) -> tuple[dict, list[str]]:
    cmd = [
        PY,
        "-m",
        "cliplab",
        "eval",
        "--model",
        str(model),
        "--zeroshot",
        str(corpus / "zeroshot_test.jsonl"),
        "--retrieval",
        str(corpus / "retrieval_test.jsonl"),
        "--device",
        "cpu",
        "--json",
    ]
    print("$ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    (work / f"eval_{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"evaluation failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{") :]), cmd


# ----------------------------------------------------------------------------- report


def table(rows: list[tuple[str, float | None, float | None, str, str]]) -> str:
    header = f"{'':34s} {'open_clip':>11s} {'cliplab':>11s} {'cliplab/oc':>11s}  {'chance':>8s}"
    lines = [header, "-" * len(header)]
    for name, oc, cl, fmt, chance in rows:
        ratio = f"{cl / oc:.2f}x" if oc and cl is not None else "-"
        lines.append(f"{name:34s} {format(oc, fmt):>11s} {format(cl, fmt):>11s} {ratio:>11s}  {chance:>8s}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, type=Path)
    p.add_argument("--budget-seconds", type=float, default=180.0, help="training-loop time of each system")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--arch", default="ViT-nano")
    p.add_argument("--calibration-steps", type=int, default=30)
    p.add_argument("--skip-steps", type=int, default=10, help="first steps excluded from the steady rate")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    a = p.parse_args()
    corpus = a.corpus.resolve()
    if a.calibration_steps <= a.skip_steps:
        p.error("--calibration-steps must exceed --skip-steps")

    work = (a.work or Path(tempfile.mkdtemp(prefix="bench_train_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pattern, n_train = pack(corpus, work / "shards")
        arch_dir = work / "open_clip_arch"
        write_open_clip_arch(arch_dir, a.arch)
        config = work / "cliplab.toml"
        write_cliplab_config(config, a.arch, pattern, a)
        print(f"{n_train} training pairs in {pattern}; working folder {work}", flush=True)

        # 1. calibration: steady seconds/step of each trainer
        oc_cal, _, _ = train_open_clip(a, work, arch_dir, pattern, a.calibration_steps, "calibration")
        cl_cal, _, _ = train_cliplab(a, work, config, a.calibration_steps, "calibration")
        oc_steps = steps_for_budget(oc_cal, a.budget_seconds, a.skip_steps)
        cl_steps = steps_for_budget(cl_cal, a.budget_seconds, a.skip_steps)
        print(
            f"calibration: open_clip {oc_cal['steady_samples_per_second']:.0f} samples/s -> {oc_steps} steps; "
            f"cliplab {cl_cal['steady_samples_per_second']:.0f} samples/s -> {cl_steps} steps",
            flush=True,
        )

        # 2. the real runs, one after the other (never concurrently)
        oc, oc_wall, oc_ckpt = train_open_clip(a, work, arch_dir, pattern, oc_steps, "run")
        oc_cmd = open_clip_command(a, arch_dir, pattern, oc_steps, work / "open_clip_logs", "run")
        cl, cl_wall, cl_model = train_cliplab(a, work, config, cl_steps, "run")
        cl_cmd = cliplab_command(a, config, cl_steps, work / "cliplab_run")

        # 3. evaluation with the same code
        oc_folder = export_open_clip(oc_ckpt, arch_dir, work / "open_clip_model")
        fidelity = check_same_forward(oc_folder, corpus)
        oc_eval, oc_eval_cmd = evaluate(oc_folder, corpus, work, "open_clip")
        cl_eval, cl_eval_cmd = evaluate(cl_model, corpus, work, "cliplab")

        oc_records = open_clip_steps(work / "open_clip_logs" / "run" / "out.log", a.batch_size)
        oc_wait = statistics.fmean(r["data_wait"] for r in oc_records[a.skip_steps :])
        z_oc, z_cl = oc_eval["zeroshot"], cl_eval["zeroshot"]
        r_oc, r_cl = oc_eval["retrieval"], cl_eval["retrieval"]
        rows = [
            ("steps", oc["steps"], cl["steps"], ".0f", ""),
            ("samples seen", oc["steps"] * a.batch_size, cl["steps"] * a.batch_size, ".0f", ""),
            ("training loop, s", oc["loop_seconds"], cl["loop_seconds"], ".1f", ""),
            ("whole process (wall clock), s", oc_wall, cl_wall, ".1f", ""),
            ("samples/s (training loop)", oc["samples_per_second"], cl["samples_per_second"], ".1f", ""),
            (
                f"samples/s (steady, after {a.skip_steps} steps)",
                oc["steady_samples_per_second"],
                cl["steady_samples_per_second"],
                ".1f",
                "",
            ),
            (
                "loss (mean of last 10 steps)",
                oc["final_loss"],
                cl["final_loss"],
                ".3f",
                f"{math.log(a.batch_size):.3f}",
            ),
            (
                f"zero-shot top-1 ({z_cl['classes']} classes)",
                z_oc["top1"],
                z_cl["top1"],
                ".2%",
                f"{z_cl['chance_top1']:.2%}",
            ),
            ("zero-shot top-5", z_oc["top5"], z_cl["top5"], ".2%", f"{z_cl['chance_top5']:.2%}"),
            (
                f"retrieval image->text R@1 ({r_cl['pairs']})",
                r_oc["image_to_text_R@1"],
                r_cl["image_to_text_R@1"],
                ".2%",
                f"{r_cl['chance_R@1']:.2%}",
            ),
            (
                "retrieval image->text R@10",
                r_oc["image_to_text_R@10"],
                r_cl["image_to_text_R@10"],
                ".2%",
                f"{r_cl['chance_R@10']:.2%}",
            ),
            (
                "retrieval text->image R@10",
                r_oc["text_to_image_R@10"],
                r_cl["text_to_image_R@10"],
                ".2%",
                f"{r_cl['chance_R@10']:.2%}",
            ),
        ]
        print("\n== commands ==")
        for cmd in (oc_cmd, cl_cmd, oc_eval_cmd, cl_eval_cmd):
            print("$ " + shlex.join(cmd))
        print(f"(cliplab config {config}:)\n" + config.read_text())
        print(
            f"== {a.arch}, batch {a.batch_size}, {a.precision}, lr {a.lr}, warmup {a.warmup_steps}, wd {a.wd}, "
            f"{a.workers} worker, budget {a.budget_seconds:.0f} s of training loop each, "
            f"{os.cpu_count()} CPU cores, torch threads {__import__('torch').get_num_threads()} =="
        )
        print(table(rows))
        print(
            f"(loss chance = ln(batch size); retrieval over {r_cl['pairs']} held-out pairs, zero-shot over "
            f"{z_cl['images']} held-out images)"
        )
        print(
            f"open_clip's wait for its data loader: {oc_wait * 1000:.0f} ms of {oc['steady_step_seconds'] * 1000:.0f} ms "
            f"a step (steady); cliplab does not log it"
        )
        print(
            f"calibration: open_clip {oc_cal['steady_samples_per_second']:.1f}, cliplab "
            f"{cl_cal['steady_samples_per_second']:.1f} steady samples/s"
        )
        print(
            f"cliplab's forward of the OpenCLIP-trained weights vs OpenCLIP's: max |diff| of normalised "
            f"features {fidelity:.2e}"
        )
        print(
            f"benchmark took {time.perf_counter() - t0:.0f} s; logs in {work}"
            if (a.work or a.keep)
            else f"benchmark took {time.perf_counter() - t0:.0f} s"
        )
    finally:
        if not (a.work or a.keep):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
