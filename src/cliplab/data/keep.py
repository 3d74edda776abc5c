"""Keep-lists: which samples of a set of shards to train on, without rewriting the shards.

``cliplab data filter SHARDS keep.txt --keep-list`` writes one; training reads it with
``data.keep = "keep.txt"`` (the shards stay where they are). The file is text: a header line, then one
``SHARD_FILE_NAME<TAB>KEY`` line per kept sample, e.g. ``shard-000000.tar	000000017``. Samples are
matched by shard file *name* and key, so the list still applies after the shard folder moves; two
training sources with shards of the same name share its entries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..files import atomic_open

__all__ = ["KEEP_LIST_HEADER", "KeepList", "read_keep_list", "write_keep_list"]

KEEP_LIST_HEADER = "# cliplab keep-list v1: shard file name<TAB>sample key"


class KeepList:
    """A set of ``(shard file name, key)`` pairs."""

    def __init__(self, entries: Iterable[tuple[str, str]] = (), source: str = "") -> None:
        self._keys: dict[str, set[str]] = {}
        self.source = source
        for shard, key in entries:
            self._keys.setdefault(shard, set()).add(key)

    def __contains__(self, item: tuple[str, str]) -> bool:
        keys = self._keys.get(item[0])
        return keys is not None and item[1] in keys

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys.values())

    def keeps(self, shard: str | os.PathLike, key: str) -> bool:
        return (Path(os.fspath(shard)).name, key) in self

    def shards(self) -> list[str]:
        return sorted(self._keys)


def read_keep_list(path: str | os.PathLike) -> KeepList:
    """Read a keep-list file (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a keep-list (the error names the line).
    """
    p = Path(os.fspath(path)).expanduser()
    entries = []
    with open(p, encoding="utf-8") as handle:
        first = handle.readline().rstrip("\n")
        if not first.startswith("# cliplab keep-list"):
            raise ValueError(
                f"{p} is not a cliplab keep-list (its first line is {first[:60]!r}); write one with "
                "`cliplab data filter SHARDS OUT --keep-list`"
            )
        for number, line in enumerate(handle, 2):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            shard, sep, key = line.partition("\t")
            if not sep or not shard or not key:
                raise ValueError(f"{p}:{number}: expected 'SHARD<TAB>KEY', got {line[:80]!r}")
            entries.append((shard, key))
    return KeepList(entries, source=str(p))


def write_keep_list(path: str | os.PathLike, entries: Iterable[tuple[str, str]]) -> int:
    """Write a keep-list atomically; returns the number of entries."""
    n = 0
    with atomic_open(path, "w") as handle:
        handle.write(KEEP_LIST_HEADER + "\n")
        for shard, key in entries:
            handle.write(f"{Path(shard).name}\t{key}\n")
            n += 1
    return n
