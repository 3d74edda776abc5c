"""Read tensors out of weights files without executing code from them: the one loading path of every
checkpoint reader (:func:`load_tensors`).

* ``.safetensors`` files hold only tensors by design.

* ``torch.save`` files (zip or legacy) go through ``torch.load(weights_only=True)``, which only
  rebuilds tensors and plain containers.
* TorchScript archives (OpenAI's published ``.pt`` files) are zip files whose ``data.pkl`` pickles
  the module tree. :func:`read_torchscript_tensors` walks that pickle with an unpickler that knows
  only tensor rebuilding and stands in an inert record for every scripted class, so no TorchScript
  or Python code is compiled or run; it returns the module's tensors under their dotted names.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .base import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist())


class _ScriptedObject:
    """Inert stand-in for a TorchScript class instance: it only records its attributes."""

    attributes: dict[str, Any]  # set by __setstate__

    def __setstate__(self, state: Any) -> None:
        self.attributes = dict(state) if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, source: Path) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._root, self._source = archive, root, source

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptedObject,), {})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise CheckpointError(
            f"{self._source}: the archive references {module}.{name}; cliplab reads only tensors and "
            "never runs code from a checkpoint"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{self._source}: unsupported storage record {pid!r}")
        raw = self._archive.read(f"{self._root}/data/{key}")
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        if flat.numel() < numel:
            raise CheckpointError(f"{self._source}: storage {key} is truncated")
        return flat


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, _ScriptedObject):
        for name, value in getattr(obj, "attributes", {}).items():
            _collect_tensors(value, f"{prefix}{name}.", out)
    elif isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors held by the scripted module in ``path``, keyed like its ``state_dict``."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if not pickles:
                raise CheckpointError(f"{path}: a zip archive without data.pkl is not a TorchScript model")
            root = pickles[0].split("/")[0]
            module = _TorchScriptUnpickler(archive.read(pickles[0]), archive, root, path).load()
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, KeyError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: damaged TorchScript archive ({error})") from error
    if not isinstance(module, _ScriptedObject):
        raise CheckpointError(f"{path}: the archive does not hold a scripted module")
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(module, "", tensors)
    tensors.pop("training", None)
    return tensors


def load_torch_file(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers, with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors, so it was not unpickled (a weights-only load: "
            f"cliplab never runs code from a checkpoint). Re-save its state dict with torch.save(model.state_dict()) or as "
            f"safetensors. Detail: {str(error).splitlines()[0]}"
        ) from error
    except Exception as error:  # torch.load surfaces malformed input as many different error types
        raise CheckpointError(f"{path} is not a readable PyTorch file ({type(error).__name__}: {error})") from error


def _state_dict_inside(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object: a bare dict of tensors, or a training checkpoint that
    keeps one under ``state_dict``/``model``/``module``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one weights file, on the CPU: ``.safetensors``, a TorchScript archive (OpenAI's
    ``.pt``), or a ``torch.save`` file holding a state dict (bare, or under ``state_dict``/``model``/
    ``module``). Nothing is unpickled but tensors; errors name the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from error
    if is_torchscript_archive(path):
        return read_torchscript_tensors(path)
    return _state_dict_inside(load_torch_file(path), path)
