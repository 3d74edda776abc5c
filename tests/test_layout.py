"""The layout's one rule: the library never imports its upper floors (the trainer, the command line,
the service, the demo). Checked on the source of every module, so a lazy import inside a function
counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import cliplab

PACKAGE = Path(cliplab.__file__).parent
UPPER_FLOORS = ("cliplab.train", "cliplab.cli", "cliplab.__main__", "cliplab.serve", "cliplab.demo")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module that the source of module ``name`` imports, relative imports resolved."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def is_upper_floor(name: str) -> bool:
    return any(name == floor or name.startswith(floor + ".") for floor in UPPER_FLOORS)


def library_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not is_upper_floor(module_name(p))]


def test_the_library_never_imports_the_trainer_cli_service_or_demo():
    modules = library_modules()
    assert len(modules) > 30 and any(module_name(p) == "cliplab.data.loader" for p in modules)
    offenders = {
        module_name(p): sorted(
            filter(is_upper_floor, imported_modules(p.read_text(), module_name(p), p.name == "__init__.py"))
        )
        for p in modules
    }
    assert {m: names for m, names in offenders.items() if names} == {}


def test_the_checker_sees_relative_and_lazy_imports():
    """The rule's checker itself: relative imports inside a function are found and resolved."""
    source = "import os\ndef f():\n    from ..train.loop import train\n    from . import store\n"
    found = imported_modules(source, "cliplab.index.probe")
    assert {"cliplab.train.loop", "cliplab.index.store", "os"} <= found
    assert is_upper_floor("cliplab.train.loop") and not is_upper_floor("cliplab.trainer_free")
    assert "cliplab.data.pairs" in imported_modules("from .pairs import x", "cliplab.data", is_package=True)


def test_the_command_line_parser_imports_no_torch():
    """`cliplab --help` answers at once: building the parser imports neither torch nor numpy."""
    import subprocess
    import sys

    code = (
        "import sys; from cliplab.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'numpy', 'faiss', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_convert_formats_listed_by_the_parser_are_the_checkpoint_formats():
    from cliplab.checkpoints import FORMATS
    from cliplab.cli.checkpoints import CONVERT_FORMATS

    assert (*FORMATS, "onnx") == CONVERT_FORMATS
