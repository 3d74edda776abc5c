"""CLIP's byte-level BPE tokenizer.

This is an independent implementation of the tokenizer used by OpenAI's CLIP
models (and by open_clip for them).  It produces exactly the same token ids as
the reference implementation, and is faster on batches because it caches the
ids of every whitespace-separated chunk of text it has seen.

Pipeline for one string
-----------------------
1. Cleaning: ``ftfy.fix_text``, ``html.unescape`` applied twice, ``strip``.
   Plain printable ASCII without ``&`` is provably left unchanged by these
   steps, so such strings skip them (the common case for English captions).
2. Whitespace runs are collapsed to one space and the text is lower-cased.
3. Every space-separated chunk is split by OpenAI's pre-tokenisation regex
   into special tokens, contractions, letter runs, single digits and runs of
   other symbols.  No regex match can contain whitespace, so the ids of a text
   are the concatenation of the ids of its chunks; that is what makes the
   per-chunk cache exact.
4. Each piece is turned into UTF-8 bytes, each byte into one of 256 base
   symbols (the last byte of a piece gets the ``</w>`` variant of its symbol),
   and adjacent symbols are merged by BPE, always applying the merge with the
   lowest rank first.

Vocabulary layout (49,408 ids): 256 byte symbols, the same 256 with ``</w>``,
48,894 merged symbols (one per merge rule, in rank order), then
``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

Batches are laid out as ``[sot, ids..., eot, 0, 0, ...]`` in rows of
``context_length`` (77 by default).  Longer sequences are cut to
``context_length`` and their last position is overwritten with ``eot``.

Note on special-token text: as in OpenAI's original tokenizer, the literal
strings ``<|startoftext|>`` and ``<|endoftext|>`` inside the input are encoded
as the special ids.  (open_clip's copy names its special tokens
``<start_of_text>`` / ``<end_of_text>`` instead, so it differs from this module
only on inputs that contain one of those four literal strings.)
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ftfy
import numpy as np
import regex

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_VOCAB_PATH",
    "Tokenizer",
    "bytes_to_unicode",
    "default_tokenizer",
    "tokenize",
]

DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_VOCAB_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
_END_OF_WORD = "</w>"

# Number of merge rules CLIP uses: lines 1..48894 of the vocabulary file.
NUM_MERGES = 49152 - 256 - 2

_PRETOKENIZE_PATTERN = (
    regex.escape(SOT_TEXT)
    + "|"
    + regex.escape(EOT_TEXT)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# ASCII characters other than printable ones and \t \n \r.  ftfy may remove or
# rewrite these, so strings containing them take the full cleaning path.
_ASCII_NEEDS_CLEANING = regex.compile(r"[^\x20-\x7e\t\n\r]")

# Cache bounds.  Each cache is emptied when it reaches its bound; this keeps
# memory bounded at negligible cost (the caches refill from the next batch).
_CHUNK_CACHE_SIZE = 1 << 17
_TEXT_CACHE_SIZE = 1 << 15
_TEXT_CACHE_MAX_CHARS = 512


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible mapping from the 256 byte values to printable characters.

    Bytes that are already visible, non-space Latin-1 characters map to
    themselves; the remaining 68 bytes (controls, space, DEL, NBSP, soft
    hyphen, ...) map to consecutive code points from U+0100 upwards, in byte
    order.  The insertion order of the returned dict (visible bytes first) is
    the order of the 256 base symbols in the vocabulary.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    mapping = {b: chr(b) for b in visible}
    next_code_point = 256
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(next_code_point)
            next_code_point += 1
    return mapping


def _read_merges(vocab_path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read the first ``NUM_MERGES`` merge rules (skipping the header line)."""
    with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merge_lines = lines[1 : NUM_MERGES + 1]
    if len(merge_lines) != NUM_MERGES:
        raise ValueError(f"{vocab_path}: expected at least {NUM_MERGES} merge rules, found {len(merge_lines)}")
    merges = []
    for line_no, line in enumerate(merge_lines, start=1):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{vocab_path}: line {line_no} is not a merge rule: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _as_int_list(ids: Iterable[int] | torch.Tensor | np.ndarray) -> list[int]:
    """One sequence of ids as a list; a [1, L] batch counts as one sequence."""
    if hasattr(ids, "detach"):  # a torch tensor
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        array = ids[0] if ids.ndim == 2 and ids.shape[0] == 1 else ids
        if array.ndim != 1:
            raise ValueError(f"decode takes one sequence of ids, got an array of shape {ids.shape}")
        return [int(i) for i in array.tolist()]
    return [int(i) for i in ids]


@dataclass(frozen=True)
class TokenBatch:
    """Token rows of a batch: ``ids`` ``[N, context_length]`` int64, zero-padded, and each row's
    ``lengths`` (positions up to and including ``eot``)."""

    ids: np.ndarray
    lengths: np.ndarray

    @property
    def attention_mask(self) -> np.ndarray:
        """``[N, context_length]`` int64: 1 up to and including ``eot``, 0 for padding."""
        return (np.arange(self.ids.shape[1], dtype=np.int64)[None, :] < self.lengths[:, None]).astype(np.int64)


class Tokenizer:
    """CLIP's BPE tokenizer (OpenAI vocabulary ``bpe_simple_vocab_16e6``).

    Args:
        vocab_path: gzip-compressed merges file; defaults to the copy shipped
            in ``cliplab/data``.
        context_length: default row length of :meth:`__call__` (77 for all
            CLIP models).

    Example:
        >>> tok = Tokenizer()
        >>> tok.encode("hello world")
        [3306, 1002]
        >>> tok("hello world")[0, :4].tolist()
        [49406, 3306, 1002, 49407]

    The tokenizer keeps two bounded caches (chunk -> ids, text -> ids).  They
    only change speed, never results.  Instances can be shared between
    threads: cache updates are single dict operations.
    """

    def __init__(
        self,
        vocab_path: str | os.PathLike | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
    ) -> None:
        self._context_length = self._check_context_length(context_length)
        self.vocab_path = Path(vocab_path) if vocab_path is not None else DEFAULT_VOCAB_PATH

        byte_to_char = bytes_to_unicode()
        base = list(byte_to_char.values())
        merges = _read_merges(self.vocab_path)
        tokens = base + [c + _END_OF_WORD for c in base] + [a + b for a, b in merges]
        tokens += [SOT_TEXT, EOT_TEXT]
        token_to_id = {t: i for i, t in enumerate(tokens)}
        if len(token_to_id) != len(tokens):
            raise ValueError(f"{self.vocab_path}: the vocabulary contains duplicate tokens")

        self._id_to_token: list[str] = tokens
        self._merges = merges
        self._token_to_id: dict[str, int] = token_to_id
        self._sot = token_to_id[SOT_TEXT]
        self._eot = token_to_id[EOT_TEXT]
        self._special = {SOT_TEXT: self._sot, EOT_TEXT: self._eot}

        # Byte value -> id of its base symbol, without and with "</w>".
        self._byte_id = [0] * 256
        self._byte_id_eow = [0] * 256
        for byte, char in byte_to_char.items():
            self._byte_id[byte] = token_to_id[char]
            self._byte_id_eow[byte] = token_to_id[char + _END_OF_WORD]
        self._char_to_byte = {char: byte for byte, char in byte_to_char.items()}

        # BPE works on ids: (left id, right id) -> (rank, id of the merged symbol).
        self._merge_table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(merges):
            # Distinct merged tokens (checked above) imply distinct pairs.
            self._merge_table[(token_to_id[a], token_to_id[b])] = (rank, token_to_id[a + b])

        self._pattern = regex.compile(_PRETOKENIZE_PATTERN, regex.IGNORECASE)
        self._chunk_cache: dict[str, tuple[int, ...]] = {}
        self._text_cache: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ properties

    @property
    def vocabulary(self) -> dict[str, int]:
        """Token -> id in id order (the content of a Hugging Face ``vocab.json``)."""
        return dict(self._token_to_id)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The BPE merge rules in rank order (the content of a Hugging Face ``merges.txt``)."""
        return list(self._merges)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (49,408 for CLIP)."""
        return len(self._id_to_token)

    @property
    def sot_token_id(self) -> int:
        """Id of ``<|startoftext|>`` (49406)."""
        return self._sot

    @property
    def eot_token_id(self) -> int:
        """Id of ``<|endoftext|>`` (49407)."""
        return self._eot

    @property
    def context_length(self) -> int:
        """Default row length used by :meth:`__call__`."""
        return self._context_length

    # ------------------------------------------------------------------ encoding

    @staticmethod
    def _check_context_length(context_length: int) -> int:
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (sot + eot), got {context_length}")
        return int(context_length)

    @staticmethod
    def clean(text: str) -> str:
        """Normalise ``text`` the way CLIP does, before pre-tokenisation.

        ftfy fixes, HTML unescaping (twice), whitespace collapsed to single
        spaces, lower case.
        """
        if not _is_plain_ascii(text):
            text = html.unescape(html.unescape(ftfy.fix_text(text)))
        return " ".join(text.split()).lower()

    def _bpe(self, piece: str) -> list[int]:
        """Byte-level BPE of one pre-tokenised piece, returning ids."""
        data = piece.encode("utf-8")
        byte_id = self._byte_id
        word = [byte_id[b] for b in data[:-1]]
        word.append(self._byte_id_eow[data[-1]])
        merge_table = self._merge_table
        while len(word) > 1:
            # Find the adjacent pair with the lowest merge rank.
            best = None
            best_rank = NUM_MERGES
            for pair in itertools.pairwise(word):
                entry = merge_table.get(pair)
                if entry is not None and entry[0] < best_rank:
                    best_rank = entry[0]
                    best = pair
            if best is None:
                break
            left, right = best
            merged = merge_table[best][1]
            # Replace every occurrence of the pair, scanning left to right.
            new_word = []
            i = 0
            n = len(word)
            while i < n:
                if i < n - 1 and word[i] == left and word[i + 1] == right:
                    new_word.append(merged)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = new_word
        return word

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Ids of one whitespace-free chunk of (not yet lower-cased) text."""
        ids: list[int] = []
        special = self._special
        for piece in self._pattern.findall(chunk.lower()):
            special_id = special.get(piece)
            if special_id is not None:
                ids.append(special_id)
            else:
                ids.extend(self._bpe(piece))
        return tuple(ids)

    def _encode_cleaned_chunks(self, chunks: list[str]) -> list[int]:
        cache = self._chunk_cache
        ids: list[int] = []
        for chunk in chunks:
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(chunk)
                if len(cache) >= _CHUNK_CACHE_SIZE:
                    cache.clear()
                cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _encode_cached(self, text: str) -> tuple[int, ...]:
        cached = self._text_cache.get(text)
        if cached is not None:
            return cached
        if _is_plain_ascii(text):
            cleaned = text
        else:
            cleaned = html.unescape(html.unescape(ftfy.fix_text(text)))
        # str.split() drops leading/trailing whitespace and collapses runs, so
        # it is the whitespace clean-up and the chunking at once.  Chunks are
        # lower-cased inside _encode_chunk; lower() never looks across
        # whitespace, so per-chunk lower-casing equals whole-text lower-casing.
        ids = tuple(self._encode_cleaned_chunks(cleaned.split()))
        if len(text) <= _TEXT_CACHE_MAX_CHARS:
            if len(self._text_cache) >= _TEXT_CACHE_SIZE:
                self._text_cache.clear()
            self._text_cache[text] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text``, without start/end tokens and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(self._encode_cached(text))

    def encode_batch(self, texts: str | Sequence[str], context_length: int | None = None) -> TokenBatch:
        """Tokenise one string or a batch into zero-padded rows (numpy; no torch needed).

        Each row is ``[sot, ids..., eot]`` padded with zeros.  A row that would
        be longer than ``context_length`` is truncated and its last position
        set to ``eot``, so every row contains exactly one ``eot``.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, (list, tuple)):
            texts = list(texts)
        length = self._context_length if context_length is None else self._check_context_length(context_length)
        sot, eot = self._sot, self._eot
        encode = self._encode_cached

        n = len(texts)
        flat: list[int] = []
        lengths = np.empty(n, dtype=np.int64)
        max_ids = length - 2
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] must be a str, got {type(text).__name__}")
            ids = encode(text)
            flat.append(sot)
            if len(ids) > max_ids:
                # Same result as cutting [sot, *ids, eot] to `length` and
                # overwriting the last position with eot.
                flat.extend(ids[: length - 2])
                lengths[row] = length
            else:
                flat.extend(ids)
                lengths[row] = len(ids) + 2
            flat.append(eot)

        out = np.zeros((n, length), dtype=np.int64)
        if n:
            # Scatter the concatenated rows into the zero-padded matrix.
            row_starts = np.cumsum(lengths) - lengths
            positions = np.arange(len(flat), dtype=np.int64) + np.repeat(
                np.arange(n, dtype=np.int64) * length - row_starts, lengths
            )
            out.reshape(-1)[positions] = np.array(flat, dtype=np.int64)
        return TokenBatch(out, lengths)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenise one string or a batch into a ``[N, context_length]`` LongTensor (see
        :meth:`encode_batch`; its ``attention_mask`` marks the positions up to each ``eot``)."""
        import torch  # the tokenizer itself needs only numpy: text queries are tokenised without torch

        return torch.from_numpy(self.encode_batch(texts, context_length).ids)

    # ------------------------------------------------------------------ decoding

    def decode(
        self,
        ids: Iterable[int] | torch.Tensor | np.ndarray,
        skip_special_tokens: bool = True,
    ) -> str:
        """Turn ids back into text (lower-cased and whitespace-normalised).

        Zero padding is removed: everything after the first ``eot`` and any
        trailing zeros.  (Trailing zeros are always padding: id 0 is ``!``
        without ``</w>``, which can never end an encoded word.)  With
        ``skip_special_tokens`` the start/end tokens are dropped; otherwise
        they appear as ``<|startoftext|>`` / ``<|endoftext|>``.  Words are
        separated by single spaces and the result is stripped; invalid UTF-8
        (e.g. from a truncated multi-byte character) becomes U+FFFD.

        Args:
            ids: one sequence: list of ints, 1-D array/tensor, or a ``[1, L]``
                batch.  Use a loop (or :meth:`decode_batch`) for ``[N, L]``.
            skip_special_tokens: drop ``<|startoftext|>`` / ``<|endoftext|>``.

        Raises:
            ValueError: for an id outside ``[0, vocab_size)`` or a
                multi-row array.
        """
        id_list = _as_int_list(ids)
        if self._eot in id_list:
            id_list = id_list[: id_list.index(self._eot) + 1]
        else:
            while id_list and id_list[-1] == 0:
                id_list.pop()

        pieces: list[str] = []
        pending: list[str] = []  # byte-level symbols not yet decoded

        def flush() -> None:
            if pending:
                data = bytes(self._char_to_byte[c] for c in "".join(pending))
                pieces.append(data.decode("utf-8", errors="replace"))
                pending.clear()

        vocab_size = self.vocab_size
        for i in id_list:
            if not 0 <= i < vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
            if i == self._sot or i == self._eot:
                flush()
                if not skip_special_tokens:
                    pieces.append(" " + self._id_to_token[i] + " ")
                continue
            token = self._id_to_token[i]
            if token.endswith(_END_OF_WORD):
                pending.append(token[: -len(_END_OF_WORD)])
                flush()
                pieces.append(" ")
            else:
                pending.append(token)
        flush()
        return " ".join("".join(pieces).split())

    def decode_batch(
        self, ids: torch.Tensor | np.ndarray | Sequence[Sequence[int]], skip_special_tokens: bool = True
    ) -> list[str]:
        """:meth:`decode` applied to every row of an ``[N, L]`` batch."""
        if hasattr(ids, "detach"):  # a torch tensor
            ids = ids.detach().cpu().numpy()
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_path={str(self.vocab_path)!r}, "
            f"context_length={self._context_length}, vocab_size={self.vocab_size})"
        )


def _is_plain_ascii(text: str) -> bool:
    """True if ``text`` is left unchanged by ftfy and HTML unescaping.

    That holds for ASCII text made of printable characters, tab, LF and CR
    with no ``&``: every ftfy fixer either targets non-ASCII characters,
    needs ``&`` (HTML entities) or ESC (terminal escapes), removes control
    characters, or turns CR into LF (a difference erased by the whitespace
    clean-up that follows).
    """
    return text.isascii() and "&" not in text and (text.isprintable() or _ASCII_NEEDS_CLEANING.search(text) is None)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The shared :class:`Tokenizer` with the bundled vocabulary (created on first use)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenise with the default tokenizer; returns a ``[N, context_length]`` LongTensor."""
    return default_tokenizer()(texts, context_length=context_length)
