"""The model card of a trained model: its towers and their licences, the data it was trained on and
theirs, how it was trained, and its held-out figures, as ``MODEL_CARD.md`` beside the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["model_card", "write_model_card"]

CARD_FILE = "MODEL_CARD.md"


def _tower_rows(model: dict[str, Any]) -> list[str]:
    rows = []
    for role in ("vision", "text"):
        tower = model.get(role, {})
        kind = tower.get("type", "cliplab")
        name = tower.get("model_name", "cliplab's own " + ("ViT/ResNet" if role == "vision" else "text transformer"))
        source = tower.get("pretrained", "") if role == "vision" else tower.get("model_name", "")
        head = tower.get("head", {})
        head_text = head.get("type", "") if isinstance(head, dict) else str(head)
        rows.append(
            f"| {role} | {kind}: `{name}` | {source or '(trained here)'} | {tower.get('licence', '') or '-'} | "
            f"{head_text or '-'} |"
        )
    return rows


def _percent(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "-"


def model_card(meta: dict[str, Any], corpus_summary: dict[str, Any] | None, name: str) -> str:
    """The card's Markdown from a saved model's ``cliplab_config.json`` and the corpus's ``summary.json``."""
    info = meta.get("metadata", {})
    config = info.get("config", {})
    train, data = config.get("train", {}), config.get("data", {})
    evaluation = info.get("eval", {})
    z, r = evaluation.get("zeroshot", {}), evaluation.get("retrieval", {})
    lines = [
        f"# {name}",
        "",
        "A CLIP model made by cliplab: an image tower and a text tower whose projections share one",
        f"{meta.get('model', {}).get('embed_dim', '?')}-d embedding space.",
        "",
        "## Towers",
        "",
        "| tower | architecture | weights | licence | projection head |",
        "|---|---|---|---|---|",
        *_tower_rows(meta.get("model", {})),
        "",
        "## Training",
        "",
        f"- locked: image tower {'yes' if train.get('lock_image') else 'no'}, text tower "
        f"{'yes' if train.get('lock_text') else 'no'} (a locked tower's trunk is frozen; its head trains)",
        f"- {info.get('steps', '?')} steps of batch {train.get('batch_size', '?')} ({info.get('samples', '?'):,} samples)"
        if isinstance(info.get("samples"), int)
        else f"- {info.get('steps', '?')} steps",
        f"- learning rate {train.get('lr', '?')}, weight decay {train.get('weight_decay', '?')}, "
        f"precision {train.get('precision', '?')}, seed {train.get('seed', '?')}",
        f"- augmentation: {'on, ' + str(data.get('views', 1)) + ' cached views per image' if data.get('augment') else 'off'}",
        f"- training time: {info.get('train_seconds', '?')} s",
        "",
        "## Data",
        "",
    ]
    if corpus_summary:
        counts = corpus_summary.get("counts", {})
        licences = corpus_summary.get("licences", {})
        lines += [
            "The sample corpus (`cliplab data sample-corpus`; its `LICENSES.md` gives every attribution):",
            "",
            "| source | licence | train | held out |",
            "|---|---|---|---|",
        ]
        for source, split in counts.items():
            held = sum(v for k, v in split.items() if k != "train")
            lines.append(f"| {source} | {licences.get(source, '')} | {split.get('train', 0)} | {held} |")
        lines += [
            "",
            "OpenMoji is held out whole (a drawing style never seen in training); near-copies of held-out",
            "images were removed from training.",
        ]
    else:
        lines.append("(no corpus summary was available)")
    lines += [
        "",
        "## Held-out figures (fp32)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| zero-shot top-1 / top-5 over {z.get('classes', '?')} OpenMoji classes | {_percent(z.get('top1'))} / "
        f"{_percent(z.get('top5'))} |",
        f"| retrieval R@10, image -> text / text -> image ({r.get('pairs', '?')} Openclipart pairs) | "
        f"{_percent(r.get('image_to_text_R@10'))} / {_percent(r.get('text_to_image_R@10'))} |",
        f"| retrieval R@1, image -> text / text -> image | {_percent(r.get('image_to_text_R@1'))} / "
        f"{_percent(r.get('text_to_image_R@1'))} |",
        "",
        "## Limits",
        "",
        "Trained on about ten thousand drawings (emoji and clip art) with their names: it knows the",
        "concepts such drawings show, not photographs, and it is far below published CLIP models.",
        "The weights combine the towers' pretrained weights (see their licences) with heads trained on",
        "the corpus above; keep the attributions when you share it.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: Path, corpus: Path | None = None) -> Path:
    """Write ``MODEL_CARD.md`` into a saved model's ``folder`` (figures from its metadata)."""
    folder = Path(folder)
    meta = json.loads((folder / "cliplab_config.json").read_text())
    summary_path = Path(corpus) / "summary.json" if corpus else None
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else None
    path = folder / CARD_FILE
    path.write_text(model_card(meta, summary, folder.name.lstrip(".").removesuffix(".partial")))
    return path
