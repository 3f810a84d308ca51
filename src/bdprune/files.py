"""Plain file I/O: atomic writes, JSON, safetensors, and state-dict files read without running code.

A leaf module: it imports nothing of bdprune's but its error types. `bdprune.checkpoint` builds run
directories (model + sidecar) on top of it.

A suspicious model is exactly the file an attacker hands you, and `torch.load` on a pickle runs whatever
code the pickle names. So bdprune never unpickles: our own files are safetensors (raw tensors and a JSON
header); a foreign `.pt`/`.pth` state dict is read only with `torch.load(weights_only=True)`, which
rebuilds tensors and plain containers and refuses everything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import CheckpointError, UnsafeCheckpointError


# -- atomic writes ---------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and replace `path` with
    one rename; a crash leaves at most a stray temporary file, never a half-written `path`. The file gets
    the permissions a plain `open(path, "w")` would give (0666 less the umask), not the temporary's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where the OS tells it (Linux); elsewhere set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


# -- tensors -----------------------------------------------------------------------------------------------
def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no memory with each other.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save tensors as safetensors atomically; returns the file's SHA-256."""
    data = save_safetensors_bytes(_plain_tensors(tensors), metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no code runs); check its SHA-256 when one is given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(f"{path} does not match the SHA-256 in its sidecar: it was changed or truncated")
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a `.pt`/`.pth`/`.bin` file without unpickling code.

    `.pt` files are opened with `torch.load(weights_only=True)`: only tensors and plain containers come
    back. A file that pickles anything else (a whole `nn.Module`, custom classes, a malicious `__reduce__`)
    is refused with `UnsafeCheckpointError`. A dict holding the weights under "state_dict" or "model" is
    unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded safely: it pickles Python objects beyond tensors ({str(exc).splitlines()[0]}). "
            "bdprune never runs a checkpoint's code, because a model from an untrusted source is exactly the "
            "file an attacker controls. If you trust its origin, re-save only the weights: "
            "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(model.state_dict(), "
            "'weights.safetensors')."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
