"""The tokenizer of a Hugging Face text tower: its fast tokenizer (``tokenizers``, Rust) behind the
interface of :class:`cliplab.tokenizer.Tokenizer`.

``encode_batch(texts, context_length=None)`` returns a :class:`~cliplab.tokenizer.TokenBatch` (numpy ids
padded with the tower's padding id, and each row's length) without importing torch; ``__call__`` returns
the same ids as a LongTensor. Texts are cleaned as OpenCLIP's ``HFTokenizer`` cleans them (ftfy, HTML
entities, whitespace runs) and then tokenised exactly as ``transformers.AutoTokenizer`` does with
``padding="max_length", truncation=True``: the special tokens of the tower's template, cut to the
context length.

A tokenizer folder is the Hugging Face layout: ``tokenizer.json`` (required: the fast tokenizer),
``tokenizer_config.json`` and ``special_tokens_map.json`` (the special tokens, ``model_max_length``).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...extras import require
from ...tokenizer import TokenBatch, _is_plain_ascii

if TYPE_CHECKING:
    import torch

__all__ = ["TOKENIZER_FILES", "HFTokenizer", "is_tokenizer_folder"]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_FILE)
#: Files from which transformers can build the fast tokenizer when tokenizer.json is absent.
_SLOW_FILES = ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")
_UNBOUNDED = 1_000_000  # transformers' model_max_length for "no limit" is ~1e30


def is_tokenizer_folder(path: Path) -> bool:
    return (path / TOKENIZER_FILE).is_file()


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # a serialised AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


def clean(text: str) -> str:
    """OpenCLIP's ``HFTokenizer`` clean-up (``whitespace``): ftfy, HTML entities twice, whitespace runs.
    Plain printable ASCII without ``&`` is left unchanged by the first two (see cliplab.tokenizer)."""
    if not _is_plain_ascii(text):
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split())


class HFTokenizer:
    """A Hugging Face fast tokenizer with cliplab's tokenizer interface.

    Args:
        tokenizer_json: the content of ``tokenizer.json``.
        config: the content of ``tokenizer_config.json`` (may be empty).
        special_tokens: the content of ``special_tokens_map.json`` (may be empty).
        context_length: default row length (the text tower's context length).
    """

    def __init__(
        self,
        tokenizer_json: str,
        config: dict[str, Any] | None = None,
        special_tokens: dict[str, Any] | None = None,
        context_length: int = 0,
    ) -> None:
        tokenizers = require("tokenizers", "towers", "a Hugging Face text tower's tokenizer")
        self._json = tokenizer_json
        self.config = dict(config or {})
        self.special_tokens = dict(special_tokens or {})
        self._backend = tokenizers.Tokenizer.from_str(tokenizer_json)
        self._backend.no_padding()
        self._backend.no_truncation()
        raw = json.loads(tokenizer_json)
        padding = raw.get("padding") or {}

        def token_id(*names: str) -> int | None:
            for name in names:
                text = _token_text(self.special_tokens.get(name)) or _token_text(self.config.get(name))
                if text is not None and self._backend.token_to_id(text) is not None:
                    return int(self._backend.token_to_id(text))
            return None

        pad = token_id("pad_token")
        if pad is None and padding.get("pad_token") is not None:
            pad = self._backend.token_to_id(padding["pad_token"])
        if pad is None:
            raise ValueError(
                "the text tower's tokenizer defines no padding token (pad_token in tokenizer_config.json or "
                "special_tokens_map.json); cliplab masks padding by its id, as OpenCLIP does"
            )
        self._pad = int(pad)
        self._sot = token_id("cls_token", "bos_token")
        self._eot = token_id("sep_token", "eos_token")
        limit = int(self.config.get("model_max_length") or _UNBOUNDED)
        self.model_max_length = limit if limit < _UNBOUNDED else 0
        length = context_length or self.model_max_length
        if not length:
            raise ValueError("the tokenizer records no model_max_length: give the text tower a context_length")
        self._context_length = self._check_context_length(length)
        self._truncated_at = 0
        self._lock = threading.Lock()  # the truncation length is the backend's state: one setter at a time

    # ------------------------------------------------------------------ construction and saving

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, context_length: int = 0) -> HFTokenizer:
        """The tokenizer in a Hugging Face folder. Without ``tokenizer.json``, transformers converts the
        slow tokenizer's files (``vocab.txt``, SentencePiece models, ...) when it can; a folder with
        none of them is an error naming the files expected."""
        folder = Path(folder)
        config = _read_json(folder / CONFIG_FILE)
        special = _read_json(folder / SPECIAL_FILE)
        if (folder / TOKENIZER_FILE).is_file():
            text = (folder / TOKENIZER_FILE).read_text(encoding="utf-8")
        elif folder.is_dir() and any((folder / name).is_file() for name in _SLOW_FILES):
            text = _convert_slow(folder)
        else:
            found = sorted(p.name for p in folder.iterdir())[:10] if folder.is_dir() else []
            raise FileNotFoundError(
                f"{folder} has no tokenizer files: a Hugging Face text tower needs {TOKENIZER_FILE} (the fast "
                f"tokenizer; {CONFIG_FILE} and {SPECIAL_FILE} name its special tokens) or a slow tokenizer's "
                f"vocabulary ({', '.join(_SLOW_FILES)}); found {found}"
            )
        return cls(text, config, special, context_length)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the Hugging Face tokenizer files (``AutoTokenizer.from_pretrained(folder)`` reads them)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TOKENIZER_FILE).write_text(self._json, encoding="utf-8")
        config = {**self.config, "model_max_length": self.model_max_length or self._context_length}
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        if self.special_tokens:
            (folder / SPECIAL_FILE).write_text(json.dumps(self.special_tokens, indent=2, ensure_ascii=False))
        return folder

    def with_context_length(self, context_length: int) -> HFTokenizer:
        """The same tokenizer with another default row length."""
        return HFTokenizer(self._json, self.config, self.special_tokens, context_length)

    # ------------------------------------------------------------------ properties

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def sot_token_id(self) -> int:
        """The id that opens every text (CLS / BOS); the padding id when the template adds none."""
        return self._pad if self._sot is None else self._sot

    @property
    def eot_token_id(self) -> int:
        """The id that closes every text (SEP / EOS); the padding id when the template adds none."""
        return self._pad if self._eot is None else self._eot

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What decides the ids (for the model fingerprint): the tokenizer file's hash, the context
        length, the padding id and the clean-up."""
        return {
            "kind": "huggingface",
            "tokenizer_json_sha256": hashlib.sha256(self._json.encode("utf-8")).hexdigest(),
            "context_length": self._context_length,
            "pad_token_id": self._pad,
            "clean": "whitespace",
        }

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer without its folder (JSON-able)."""
        return {
            "kind": "huggingface",
            "tokenizer_json": self._json,
            "config": self.config,
            "special_tokens": self.special_tokens,
            "context_length": self._context_length,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> HFTokenizer:
        return cls(spec["tokenizer_json"], spec.get("config"), spec.get("special_tokens"), spec["context_length"])

    @staticmethod
    def _check_context_length(context_length: int) -> int:
        if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
            raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        return int(context_length)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` with the tower's special tokens, not truncated."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(self._backend.encode(clean(text)).ids)

    def encode_batch(self, texts: str | Sequence[str], context_length: int | None = None) -> TokenBatch:
        """Rows ``[N, context_length]`` int64 padded with :attr:`pad_token_id` and each row's length,
        as ``transformers`` tokenises with ``padding="max_length", truncation=True`` (numpy; no torch)."""
        if isinstance(texts, str):
            texts = [texts]
        length = self._context_length if context_length is None else self._check_context_length(context_length)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{row}] must be a str, got {type(text).__name__}")
        cleaned = [clean(text) for text in texts]
        with self._lock:
            if self._truncated_at != length:
                self._backend.enable_truncation(max_length=length)
                self._truncated_at = length
            # One text (a data-loader worker's caption) without the thread pool: tokenizers' parallelism
            # must not start in a process that forks workers later.
            if len(cleaned) == 1:
                encodings = [self._backend.encode(cleaned[0])]
            else:
                encodings = self._backend.encode_batch(cleaned)
        out = np.full((len(texts), length), self._pad, dtype=np.int64)
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids = encoding.ids
            out[row, : len(ids)] = ids
            lengths[row] = len(ids)
        return TokenBatch(out, lengths)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """:meth:`encode_batch`'s ids as a ``[N, context_length]`` LongTensor."""
        import torch

        return torch.from_numpy(self.encode_batch(texts, context_length).ids)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        while ids and ids[-1] == self._pad:
            ids.pop()
        return str(self._backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def decode_batch(self, ids: Any, skip_special_tokens: bool = True) -> list[str]:
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        return [self.decode(row, skip_special_tokens) for row in ids]

    def __repr__(self) -> str:
        return f"HFTokenizer(context_length={self._context_length}, vocab_size={self.vocab_size}, pad={self._pad})"

    def __getstate__(self) -> dict[str, Any]:
        return self.spec()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tokenizer_json"], state["config"], state["special_tokens"], state["context_length"])  # type: ignore[misc]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    return data if isinstance(data, dict) else {}


def _convert_slow(folder: Path) -> str:
    """tokenizer.json built by transformers from a slow tokenizer's files."""
    transformers = require("transformers", "towers", "converting a slow tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as error:
        raise FileNotFoundError(
            f"{folder} has no {TOKENIZER_FILE} and transformers could not build one from its files "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise FileNotFoundError(f"{folder} has no {TOKENIZER_FILE} and its tokenizer has no fast version")
    return str(tokenizer.backend_tokenizer.to_str())
