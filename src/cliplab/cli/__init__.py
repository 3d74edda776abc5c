"""The ``cliplab`` command: one sub-command per job, grouped by what they work on.

=================  ==============================================
module             commands
=================  ==============================================
``encode``         classify, embed, similarity
``checkpoints``    convert, info
``training``       train, eval, plot-run
``data``           data extract, download, filter, pack, sample-corpus, sources
``search``         index, search, serve
``vision``         detect, explain, generate
``demo``           demo, setup
``calibrate``      calibrate (int8)
=================  ==============================================

Each module registers its commands' parsers beside their handlers. Run ``cliplab COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .._version import __version__
from . import calibrate, checkpoints, data, demo, encode, search, training, vision
from .base import HelpFormatter, Parser, is_user_error, user_message

COMMAND_GROUPS = (encode, checkpoints, training, data, search, vision, demo, calibrate)

EXAMPLES = """examples:
  cliplab demo                                    # the main job on the built-in default model
  cliplab classify photo.jpg --labels "a cat,a dog,a bus" --model ViT-B-32/openai
  cliplab embed --images photos/*.jpg --out vectors.npy
  cliplab index ~/Pictures --store photos.store && cliplab search photos.store "a red car" -k 5
  cliplab serve photos.store                      # http://127.0.0.1:8000/
  cliplab train src/cliplab/recipes/cliplab-mini.toml --out runs/mini
  cliplab convert ViT-B-32.pt exported/ --to huggingface

Run `cliplab COMMAND --help` for a command's options, defaults and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cliplab", description="CLIP from training to serving.", epilog=EXAMPLES, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"cliplab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def _one_line_warning(name: str):
    """cliplab's own warnings (a precision that falls back, a stale calibration) as one line on stderr."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("cliplab."):
            print(f"cliplab {name}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the sub-command's own parser, with its usage and a suggestion
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    name = args.command + (f" {args.data_command}" if getattr(args, "data_command", None) else "")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(name)
            return args.handler(args)
    except KeyboardInterrupt:
        print(f"cliplab {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"cliplab {name}: error: {user_message(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
