"""Every bad input through every entry point that takes it, with the outcome of each.

An outcome is ``ok``, ``allowed: WHY`` (a documented exception to the expectation), or
``error: MESSAGE`` for a specific refusal (an exception cliplab raises on purpose, an exit status 1
with a message, an HTTP 4xx with a detail), or ``skipped: REASON`` for a batch job that recorded the
reason and went on. Anything else (a traceback, an HTTP 500, a code
path that runs pickled code) is ``CRASH`` and fails the report.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .bad_inputs import BadInput


@dataclass
class Row:
    entry: BadInput
    outcomes: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        for outcome in self.outcomes.values():
            if outcome.startswith("CRASH"):
                return False
            if self.entry.expect == "error" and outcome == "ok":  # "allowed: ..." is a documented exception
                return False
            if self.entry.expect == "ok" and not (outcome == "ok" or outcome.startswith("error: [limit]")):
                return False
        return True


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from cliplab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


def _cli_outcome(argv: list[str], name: str | None = None) -> str:
    try:
        status, _, err = _cli(argv)
    except Exception as error:
        return f"CRASH: {type(error).__name__}: {error}"
    message = err.strip().splitlines()[-1] if err.strip() else ""
    if status == 0:
        return "ok"
    if status == 1 and "error:" in message and (name is None or name in err):
        return f"error: {message.split('error:', 1)[1].strip()[:160]}"
    return f"CRASH: exit {status}: {message[:200]}"


def _call(function, expected_errors: tuple[type[BaseException], ...], name: str | None = None) -> str:
    try:
        function()
        return "ok"
    except expected_errors as error:
        text = str(error)
        if name is not None and name not in text:
            return f"CRASH: the message does not name {name}: {text[:160]}"
        return f"error: {text[:160]}"
    except Exception as error:
        return f"CRASH: {type(error).__name__}: {str(error)[:200]}"


def _http(client, method: str, url: str, **kwargs) -> str:
    try:
        response = getattr(client, method)(url, **kwargs)
    except Exception as error:
        return f"CRASH: {type(error).__name__}: {error}"
    if response.status_code == 200:
        return "ok"
    if 400 <= response.status_code < 500:
        detail = str(response.json().get("detail", ""))[:150]
        tag = "[limit] " if response.status_code == 413 else ""
        return f"error: {tag}HTTP {response.status_code} {detail}"
    return f"CRASH: HTTP {response.status_code}"


def run_all(entries: list[BadInput], model: str, work: Path, detect: bool = True) -> list[Row]:
    """Run every entry through the entry points; ``model`` is a good checkpoint folder."""
    from fastapi.testclient import TestClient

    import cliplab
    from cliplab.checkpoints import CheckpointError
    from cliplab.images import ImageLoadError
    from cliplab.index import Searcher, Store, index_paths
    from cliplab.serve import ServeSettings, create_app
    from cliplab.zeroshot import ZeroShotClassifier

    pipeline = cliplab.load(model, device="cpu")
    rows = [Row(e) for e in entries]
    images = [r for r in rows if r.entry.kind == "image"]
    texts = [r for r in rows if r.entry.kind == "text"]
    checkpoints = [r for r in rows if r.entry.kind == "checkpoint"]

    # The store: one good image committed first, then every bad image in one batch run.
    good_folder, bad_folder = work / "good", work / "bad-images"
    good_folder.mkdir(parents=True, exist_ok=True)
    bad_folder.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 120, 200)).save(good_folder / "good.png")
    for row in images:
        shutil.copy(row.entry.path, bad_folder / row.entry.name)
    store = work / "store"
    index_paths(pipeline, store, [good_folder], workers=0, progress=False)
    with Store(store) as opened:
        good_vector = opened.vector(opened.item_by_key(str((good_folder / "good.png").resolve())).id)
    try:
        report = index_paths(pipeline, store, [bad_folder], workers=1, batch_size=4, progress=False)
        failed = {Path(f["path"]).name: f["reason"] for f in report.failed}
        index_crash = None
    except Exception as error:
        failed, index_crash = {}, f"CRASH: {type(error).__name__}: {error}"
    with Store(store) as opened:
        kept = opened.item_by_key(str((good_folder / "good.png").resolve()))
        nothing_lost = kept is not None and (opened.vector(kept.id) == good_vector).all()
        stored = {Path(i.path).name for i in opened.iter_items("image")}

    client = TestClient(create_app(pipeline, str(store), ServeSettings()))
    searcher = Searcher(pipeline, store)
    detector = None
    if detect:
        try:
            from cliplab.detect import detect as detector
        except ImportError:
            detector = None

    for row in images:
        path, name = row.entry.path, row.entry.name
        row.outcomes["embed"] = _call(lambda: pipeline.embed_images([path]), (ImageLoadError,), name)
        row.outcomes["classify"] = _cli_outcome(
            ["classify", path, "--labels", "a cat,a dog", "--model", model, "--json"], name
        )
        if index_crash:
            row.outcomes["index"] = index_crash
        elif name in failed:
            row.outcomes["index"] = f"skipped: {failed[name][:150]}"
        else:
            row.outcomes["index"] = "ok" if name in stored else "CRASH: neither stored nor recorded as failed"
        row.outcomes["search"] = _call(lambda: searcher.image(path, k=3), (ImageLoadError,), name)
        with open(path, "rb") as handle:
            data = handle.read()
        row.outcomes["http"] = _http(client, "post", "/api/search/image", files={"file": (name, data)})
        if detector is not None:
            row.outcomes["detect"] = _call(lambda: detector(pipeline, path, ["a cat"]), (ImageLoadError,), name)

    for row in texts:
        text = row.entry.text
        row.outcomes["embed"] = _call(lambda: pipeline.embed_texts([text]), ())
        if row.entry.expect == "error" and row.outcomes["embed"] == "ok":
            row.outcomes["embed"] = "allowed: embedded as the empty prompt, as the reference does"
        row.outcomes["search"] = _call(lambda: searcher.text(text, k=3), (ValueError,))
        row.outcomes["classify labels"] = _call(
            lambda: ZeroShotClassifier.from_labels(pipeline, [text, "a dog"]), (ValueError,)
        )
        row.outcomes["http"] = _http(
            client,
            "post",
            "/api/search",
            content=json.dumps({"q": text, "k": 3}).encode("utf-8", "surrogatepass"),
            headers={"content-type": "application/json"},
        )

    marker = Path(entries[-1].path).parent.parent / "CODE_WAS_RUN"
    for row in checkpoints:
        path, name = row.entry.path, row.entry.name
        row.outcomes["load"] = _call(lambda: cliplab.load(path), (CheckpointError,), name)
        row.outcomes["info"] = _cli_outcome(["info", path, "--json"], name)
        row.outcomes["index"] = _cli_outcome(
            ["index", str(good_folder), "--store", str(work / "ckpt-store"), "--model", path, "--json"], name
        )
        if marker.exists():
            row.outcomes["load"] = "CRASH: unpickling ran code (the marker file exists)"
    searcher.close()
    summary = {"nothing_lost": bool(nothing_lost), "code_ran": marker.exists()}
    (work / "bad_inputs_summary.json").write_text(json.dumps(summary))
    return rows
