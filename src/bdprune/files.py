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
import io
import json
import os
import pickle
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import BdpruneError, CheckpointError, InvalidInput, OutputError, UnsafeCheckpointError

MAX_FILE_BYTES = 8 * 2**30  # weights: 180x a paper-size ResNet-18; bigger files are refused, not read
MAX_JSON_BYTES = 64 * 2**20  # a sidecar with every index of a 1M-sample training set is ~10 MB
READ_CHUNK_BYTES = 2**20  # a file that grows while read is read on in chunks of this size
OUTPUT_MARKERS = ("model.json", "summary.json", "comparison.json")  # a directory bdprune wrote has one of these


# -- reading files we did not write ------------------------------------------------------------------------
def read_bytes(path: str | Path, *, limit: int = MAX_FILE_BYTES, error: type[BdpruneError] = CheckpointError) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking and checked on the open descriptor: a pipe (which would block forever), a
    device (/dev/zero never ends), a directory or an oversized (e.g. sparse) file is refused before a byte
    is read, with an `error` (a dataset reader passes its own error type).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"missing {path}") from None
    except OSError as exc:
        raise error(f"cannot read {path} ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        if info.st_size > limit and stat.S_ISREG(info.st_mode):
            raise error(
                f"{path} is {info.st_size:,} bytes, more than bdprune reads ({limit:,}); it is not a file bdprune wrote"
            )
        kind = (
            "a directory"
            if stat.S_ISDIR(info.st_mode)
            else "a pipe"
            if stat.S_ISFIFO(info.st_mode)
            else "a device or socket"
        )
        raise error(f"{path} is {kind}, not a regular file; give the file itself")
    # Ask for what the file holds (its size), never for the limit: `f.read(limit + 1)` reserves the whole
    # limit (8 GiB) up front, which fails under any memory cap (a container, `ulimit -v`) whatever the size.
    # A file that grows while being read is read on in bounded chunks, up to the limit.
    with os.fdopen(fd, "rb") as f:
        parts = [f.read(info.st_size + 1)]
        total = len(parts[0])
        while info.st_size < total <= limit and (chunk := f.read(READ_CHUNK_BYTES)):
            parts.append(chunk)
            total += len(chunk)
    if total > limit:
        raise error(f"{path} grew past {limit:,} bytes while being read")
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- atomic writes ---------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and replace `path` with
    one rename; a crash leaves at most a stray temporary file, never a half-written `path`. The file gets
    the permissions a plain `open(path, "w")` would give (0666 less the umask), not the temporary's 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
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
    """A JSON file of at most MAX_JSON_BYTES, read with `read_bytes`'s checks."""
    path = Path(path)
    data = read_bytes(path, limit=MAX_JSON_BYTES)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path} nests its JSON too deeply: it is not a file bdprune wrote") from None


def jsonable(obj: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); tensors become lists."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


# -- output directories: all or nothing --------------------------------------------------------------------
def check_output_dir(out: str | Path, *, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse, before any work is done, an output directory that cannot or must not be written.

    It must be a non-empty path; if it exists, a directory that is empty or that bdprune wrote (it will be
    replaced as a whole); never one of `inputs` nor a directory holding one; and its parent must be writable.
    """
    if not str(out).strip():
        raise InvalidInput("the output directory is empty ('--out \"\"'); name a new directory")
    out = Path(out).expanduser()
    resolved = out.resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if resolved == source or resolved in source.parents:
            raise InvalidInput(f"the output {out} would overwrite the input {given}; choose another directory")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise InvalidInput(f"the output {out} exists and is not a directory; choose a new directory")
        entries = {p.name for p in out.iterdir()}
        if entries and not entries & set(OUTPUT_MARKERS):
            raise InvalidInput(
                f"the output {out} is a directory bdprune did not write (it holds "
                f"{', '.join(sorted(entries)[:3])}...); choose a new directory"
            )
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInput(f"cannot write {out}: {parent} is not a writable directory")
    try:  # permissions do not tell all (/sys, a read-only mount, root on a locked path): try it
        os.rmdir(tempfile.mkdtemp(prefix=".bdprune-probe.", dir=parent))
    except OSError as exc:
        raise InvalidInput(
            f"cannot write {out}: creating a directory in {parent} failed ({exc.strerror or exc}); choose another --out"
        ) from None
    return out


@contextmanager
def staged_output(out: str | Path, *, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Write a whole output directory or nothing: the block writes into a hidden staging directory beside
    `out`, which replaces `out` (a previous output of bdprune's) only when the block succeeds.

    A crash or kill leaves at most a `.NAME.*.partial` directory, never a half-written `out`.
    """
    out = check_output_dir(out, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    data = read_bytes(path)
    check_sha256(data, expected_sha256, path)
    return tensors_from_bytes(data, path)


def check_sha256(data: bytes, expected: str | None, path: str | Path) -> None:
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{path} does not match the SHA-256 in its sidecar: it was changed or truncated")


def tensors_from_bytes(data: bytes, path: str | Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from None


def safetensors_shapes(data: bytes, path: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a safetensors file declares in its header, read before any tensor is built."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("the header is longer than the file")
        header = json.loads(data[8 : 8 + size])
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a `.pt`/`.pth`/`.bin` file without unpickling code.

    `.pt` files are opened with `torch.load(weights_only=True)`: only tensors and plain containers come
    back. A file that pickles anything else (a whole `nn.Module`, custom classes, a malicious `__reduce__`)
    is refused with `UnsafeCheckpointError`. A dict holding the weights under "state_dict" or "model" is
    unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    data = read_bytes(path)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded safely: it is not in torch's zip format (torch.save since torch 1.6), and "
            "the legacy format declares sizes that torch allocates before reading them; re-save only the weights "
            "with a current torch: torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file("
            "model.state_dict(), 'weights.safetensors')."
        )
    try:
        entries = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({exc})") from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or sum(e.file_size for e in entries) > len(data):
        raise CheckpointError(
            f"{path} holds compressed entries (torch.save never writes them): it would expand "
            "beyond its size when read; re-save it with torch.save or as safetensors"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(
            r"GLOBAL ([\w.]+)", str(exc)
        )  # torch names the refused class; the rest of its text is not ours
        name = found.group(1) if found else ""
        whole = ".nn.modules." in name or name.startswith(("torchvision.", "timm."))
        what = (
            f"a {name} object" + (" (a whole model, saved with torch.save(model))" if whole else "")
            if name
            else "Python objects beyond tensors"
        )
        raise UnsafeCheckpointError(
            f"{path} cannot be loaded safely: it pickles {what}, "
            "and unpickling runs code the file names. bdprune reads weights only, because a model from an untrusted source "
            "is exactly the file an attacker controls. If you trust its origin, re-save only the weights: "
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
