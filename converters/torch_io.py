"""Reading and writing PyTorch-side weight files as flat `{key: numpy array}` dicts.

`.safetensors` needs only the `safetensors` package; `.pt`/`.pth`/`.bin` pickles and TorchScript
archives need torch (the `torch` extra). bf16 tensors cross as `ml_dtypes.bfloat16` bit patterns, so
nothing is rounded on the way. Writes go to a temporary sibling that is renamed into place only once
complete, so a failed conversion never leaves a half-written destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointFormatError(ValueError):
    """The file is not a weight file we can read (unknown type, corrupt, wrong container)."""


def require_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError("reading or writing PyTorch files needs torch: pip install 'vlalign-jax[torch]'") from e
    return torch


def require_safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as e:
        raise ImportError("reading or writing .safetensors needs safetensors: pip install 'vlalign-jax[torch]'") from e
    return safetensors.numpy


def is_torchscript(path: Path) -> bool:
    """TorchScript archives (OpenAI's released CLIP .pt files) are zips holding compiled code."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def tensor_to_numpy(t: Any) -> np.ndarray:
    torch = require_torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def numpy_to_tensor(a: np.ndarray) -> Any:
    torch = require_torch()
    a = np.asarray(a, order="C")
    if not a.flags.writeable:  # e.g. a view of a jax.Array; torch tensors must own writable memory
        a = a.copy()
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def load_torch_object(path: Path) -> Any:
    """The unpickled object of a .pt/.bin file (tensors kept as torch), or a TorchScript state_dict."""
    torch = require_torch()
    try:
        if is_torchscript(path):
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files; name the file once, here.
        raise CheckpointFormatError(f"could not read {path} as a PyTorch checkpoint: {type(e).__name__}: {e}") from e


def tensors_to_numpy(obj: Mapping[str, Any], source: Path) -> dict[str, np.ndarray]:
    """A flat dict of torch tensors -> numpy; a non-tensor value is an error naming its key."""
    torch = require_torch()
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = tensor_to_numpy(value)
    return out


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    st = require_safetensors()
    try:
        return dict(st.load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types for truncated headers.
        raise CheckpointFormatError(f"could not read {path} as safetensors: {type(e).__name__}: {e}") from e


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` (config.json and friends); unreadable JSON or a non-object names the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"could not read {path} as JSON: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def hf_weight_keys(path: Path) -> set[str]:
    """The weight names of a Hugging Face folder (sharded index or single safetensors), read without
    loading any tensor; empty when neither is there. Used to tell model families apart."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).exists():
            return set(read_json(path / index_name)["weight_map"])
    if (path / "model.safetensors").exists():
        from safetensors import safe_open

        try:
            with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
                return set(f.keys())
        except Exception as e:  # safetensors raises its own error types for truncated headers.
            raise CheckpointFormatError(f"could not read {path / 'model.safetensors'} as safetensors: "
                                        f"{type(e).__name__}: {e}") from e
    return set()


def save_state_dict(state: Mapping[str, np.ndarray], path: Path, metadata: Mapping[str, str] | None = None,
                    extra: Mapping[str, Any] | None = None, nest_under: str | None = None,
                    overwrite: bool = True) -> None:
    """Write a state_dict to `.safetensors` or a torch pickle, atomically.

    `nest_under` puts the tensors under that key of a dict that also holds `extra` (training-checkpoint
    layouts such as `{"epoch": ..., "state_dict": {...}}`); safetensors files cannot hold extras.
    """
    with atomic_path(path, overwrite) as tmp:
        if path.suffix == ".safetensors":
            if extra or nest_under:
                raise ValueError(f"{path}: safetensors files hold tensors only; use a .pt destination")
            if any(a.dtype == ml_dtypes.bfloat16 for a in state.values()):
                _save_bf16_safetensors(state, tmp, metadata)
            else:
                require_safetensors().save_file({k: np.asarray(v, order="C") for k, v in state.items()},
                                                str(tmp), metadata=dict(metadata or {}))
        elif path.suffix in TORCH_SUFFIXES:
            torch = require_torch()
            tensors = {k: numpy_to_tensor(v) for k, v in state.items()}
            obj: Any = tensors if nest_under is None else {**(extra or {}), nest_under: tensors}
            torch.save(obj, str(tmp))
        else:
            raise CheckpointFormatError(
                f"{path}: unknown weight file type {path.suffix!r}; use .safetensors or one of {TORCH_SUFFIXES}")


def _save_bf16_safetensors(state: Mapping[str, np.ndarray], tmp: Path, metadata: Mapping[str, str] | None) -> None:
    # safetensors.numpy has no bfloat16; its torch writer does.
    require_torch()
    from safetensors.torch import save_file
    save_file({k: numpy_to_tensor(v) for k, v in state.items()}, str(tmp), metadata=dict(metadata or {}))


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces `path` only if the block succeeds."""
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
