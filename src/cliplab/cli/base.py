"""What every command shares: the parser class, the model options, loading, and user-facing errors.

Parsers are built without importing torch (``cliplab --help`` must answer at once); each handler
imports what it runs.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..paths import DEFAULT_MODEL


class CommandError(Exception):
    """A user-facing failure: printed as one line without a traceback, exit status 1."""


# Exceptions whose message is written for the user: ``(module, class name)``, looked up only in modules
# already imported, so the command line never imports a module just to name its errors.
USER_ERRORS = (
    ("cliplab.cli.base", "CommandError"),
    ("cliplab.checkpoints.base", "CheckpointError"),
    ("cliplab.images", "ImageLoadError"),
    ("cliplab.index.store", "StoreError"),
    ("cliplab.extras", "MissingExtraError"),
    ("cliplab.data.corpus.sources", "CorpusSourcesError"),
    ("builtins", "ValueError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "IsADirectoryError"),
    ("builtins", "NotADirectoryError"),
    ("builtins", "PermissionError"),
    ("builtins", "FileExistsError"),
    ("builtins", "KeyError"),
    ("builtins", "ConnectionError"),
)


def is_user_error(error: BaseException) -> bool:
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return True
    return False


def user_message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with every default stated, and descriptions and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors suggest the closest command or option ("did you mean")."""

    def error(self, message: str) -> NoReturn:
        message += _suggestion(self, message)
        super().error(message)


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    choice = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        options = re.findall(r"'([^']*)'", choice.group(2)) or [s.strip() for s in choice.group(2).split(",")]
        close = difflib.get_close_matches(choice.group(1), options, n=1)
        return f"; did you mean {close[0]!r}?" if close else ""
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        known = [s for action in parser._actions for s in action.option_strings]
        hints = []
        for word in unknown.group(1).split():
            if word.startswith("-"):
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close:
                    hints.append(f"{word} -> {close[0]}")
        return f" (did you mean: {', '.join(hints)})" if hints else ""
    return ""


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help: str,
    description: str | None = None,
    examples: Sequence[str] = (),
) -> Parser:
    """A sub-command whose ``--help`` shows ``description`` and ``examples``."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples) if examples else None
    parser = commands.add_parser(
        name,
        help=help,
        description="\n\n".join(
            textwrap.fill(part, 100) for part in (description or help[:1].upper() + help[1:] + ".").split("\n\n")
        ),
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(handler=handler, command_parser=parser)
    return parser


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON result instead of text")


def add_activation(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    act = parser.add_mutually_exclusive_group()
    act.add_argument(
        "--gelu",
        dest="quick_gelu",
        action="store_false",
        default=None,
        help="the checkpoint uses GELU (for bare state dicts that do not record it)",
    )
    act.add_argument(
        "--quick-gelu", dest="quick_gelu", action="store_true", help="the checkpoint uses QuickGELU (OpenAI's weights)"
    )


def add_model(parser: argparse.ArgumentParser, default_hint: str = DEFAULT_MODEL) -> None:
    """``--model``, ``--device``, ``--precision`` and the activation of bare state dicts."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help=f"checkpoint path or name, e.g. ./ckpt or ViT-B-32/openai (default: {default_hint})",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    group.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "int8"),
        default="auto",
        help="what the encoders compute in; auto: bf16 where the hardware has it natively, but fp32 for one-shot "
        f"work on fewer than {ONE_SHOT_ITEMS} inputs (bf16's warm-up costs more than it saves there); int8: CPUs "
        "with VNNI or AMX, fastest after `cliplab calibrate`",
    )
    add_activation(group)


#: Below this many images or texts, ``--precision auto`` computes in fp32: bf16's kernel warm-up (seconds on
#: these CPUs) costs more than it saves on a handful of inputs.
ONE_SHOT_ITEMS = 64


def load_pipeline(args: argparse.Namespace, model: str | None = None, one_shot: bool = False):
    """The model the command asked for (``--model``, else ``model``, else the default). ``one_shot``:
    the command encodes only a few inputs, so ``--precision auto`` means fp32."""
    from ..api import load

    precision = "fp32" if one_shot and args.precision == "auto" else args.precision
    return load(args.model or model, device=args.device, quick_gelu=args.quick_gelu, precision=precision)


def image_files(paths: Sequence[str], what: str = "image") -> list[str]:
    """The paths, checked to be files; a missing one or a folder is a :class:`CommandError`."""
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        raise CommandError(
            f"{folders[0]} is a folder, not an {what} file: pass the files inside it "
            f"(e.g. {folders[0].rstrip('/')}/*.jpg)"
        )
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise CommandError(f"no such {what} file: {', '.join(missing[:5])}")
    return list(paths)


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))
