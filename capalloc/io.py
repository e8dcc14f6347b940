"""Reading weight matrices and importance vectors from files.

Supported containers
--------------------
``.npy``
    One array.
``.npz``
    Several named arrays; ``key`` picks one.
``.pt`` / ``.pth`` / ``.bin``
    A torch tensor or a (possibly nested) state dict, loaded with
    ``torch.load(..., weights_only=True)`` so no pickled code runs. Nested
    dicts are flattened with dotted keys (``"model.encoder.weight"``).
``.safetensors``
    Read with a small header parser and a memory map, so the ``safetensors``
    package is not needed and only the requested tensor is read; ``BF16`` and
    ``F16`` tensors are widened to float32.
``.txt`` / ``.csv``
    Numbers separated by commas, whitespace or newlines.

Without ``key``, a container holding exactly one two-dimensional array gives
that array; otherwise the error lists the candidates and their shapes.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from capalloc.io import load_matrix
>>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
>>> np.savez(path, W=np.eye(2, 3), b=np.zeros(2))
>>> load_matrix(path).shape
(2, 3)
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

__all__ = [
    "check_file",
    "check_memory",
    "load_arrays",
    "load_matrix",
    "load_vector",
    "read_safetensors_header",
]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_TEXT_SUFFIXES = (".txt", ".csv", ".tsv")

# safetensors dtype codes that map directly onto numpy dtypes (little endian).
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}


def _available_memory() -> int | None:
    """Bytes of memory this process may still allocate (``None`` where unknown).

    ``MemAvailable`` of ``/proc/meminfo``, lowered to the room left under a cgroup
    v2 limit; elsewhere the free physical pages.
    """
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            room = int(limit) - int(f.read())
        avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            pass
    return avail


def _bytes_text(nbytes: int) -> str:
    for power, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB")):
        if nbytes >= 2**power:
            if nbytes >= 2**60:
                return f"about 10^{len(str(int(nbytes))) - 1} bytes"
            return f"{nbytes / 2**power:.3g} {unit}"
    return f"{int(nbytes)} bytes"


def check_memory(nbytes: int, what: str) -> None:
    """Raise ``ValueError`` when ``what`` needs more than the available memory (``nbytes``).

    Examples
    --------
    >>> from capalloc.io import check_memory
    >>> check_memory(10**30, "a (10**29,) float64 array")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: a (10**29,) float64 array needs about 10^30 bytes of memory; only ... available
    """
    avail = _available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{what} needs {_bytes_text(nbytes)} of memory; only {_bytes_text(avail)} available"
        )


def check_file(path: str | os.PathLike) -> int:
    """Size in bytes of the regular file ``path``; ``OSError`` naming what it is otherwise.

    A missing path gives ``FileNotFoundError``, a directory ``IsADirectoryError``,
    a FIFO, socket or device ``OSError`` (none is opened, so a FIFO cannot block).
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: no such file") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path}: is not a regular file (a FIFO, socket or device)")
    return info.st_size


def _npy_header(fh: IO[bytes], name: str, size: int) -> None:
    """Check the ``.npy`` stream ``fh`` (at its start, ``size`` bytes long) before reading it.

    Refuses, without allocating, a bad header, pickled objects, data shorter than
    the header's shape claims and arrays larger than the available memory.
    """
    if size == 0:
        raise ValueError(f"{name}: empty file (0 bytes), not a .npy array")
    try:
        version = npy_format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs in utf-8 field names only
            shape, _, dtype = npy_format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown format version {version}")
    except (zipfile.BadZipFile, zlib.error):  # a damaged .npz: reported by _load_npz
        raise
    except Exception as exc:  # noqa: BLE001 - the header parser raises many kinds
        raise ValueError(f"{name}: not a .npy array ({_reason(exc)})") from None
    if dtype.hasobject:
        raise ValueError(f"{name}: holds Python objects (pickled data), which are not loaded")
    nbytes = math.prod(shape) * dtype.itemsize
    have = size - fh.tell()
    if nbytes > have:
        raise ValueError(
            f"{name}: truncated or corrupt .npy: the header claims shape "
            f"{_short_shape(shape)} {dtype} ({nbytes} bytes of data) but only "
            f"{have} bytes follow"
        )
    check_memory(nbytes, f"{name}: array of shape {_short_shape(shape)} {dtype}")


def _short_shape(shape: tuple[int, ...]) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 60 else text[:57] + "..."


def _load_npy(path: str, size: int) -> np.ndarray:
    with open(path, "rb") as fh:
        _npy_header(fh, path, size)
        fh.seek(0)
        try:
            return npy_format.read_array(fh, allow_pickle=False)
        except (ValueError, EOFError) as exc:
            raise ValueError(f"{path}: cannot read as .npy ({_reason(exc)})") from None


def _load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (zip of ``.npy``), each member checked before it is read."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                name = f"{path}: member {key!r}"
                with zf.open(info) as fh:
                    _npy_header(fh, name, info.file_size)
                with zf.open(info) as fh:
                    out[key] = npy_format.read_array(fh, allow_pickle=False)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,
        NotImplementedError,
    ) as exc:  # corrupt offsets, encryption, unknown compression
        raise ValueError(f"{path}: not a valid .npz archive ({_reason(exc)})") from None
    except ValueError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: cannot read as .npz ({_reason(exc)})") from None
    return out


def _suffix(path: str) -> str:
    return os.path.splitext(str(path))[1].lower()


def _describe(arrays: Mapping[str, Any]) -> str:
    items = [f"{name} {tuple(np.shape(a))}" for name, a in arrays.items()]
    if len(items) > 12:
        items = items[:12] + [f"... ({len(arrays) - 12} more)"]
    return ", ".join(items) if items else "(none)"


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (bfloat16/half widened to float32)."""
    if type(value).__module__.split(".")[0] == "torch":
        import torch

        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.to(torch.float32)  # numpy has no bfloat16
        return t.numpy()
    arr = np.asarray(value)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr


def read_safetensors_header(path: str) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: name -> {dtype, shape, data_offsets}.

    The file starts with an 8-byte little-endian header length, then that many
    bytes of JSON; tensor data follow, at offsets relative to the end of the
    header. ``"__metadata__"`` is dropped.
    """
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {size})")
        try:
            header = json.loads(f.read(size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a safetensors file (bad header: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, info in header.items():
        keys = {"dtype", "shape", "data_offsets"}
        if not isinstance(info, dict) or not keys <= info.keys():
            raise ValueError(f"{path}: malformed safetensors entry {name!r}")
    header["__header_size__"] = 8 + size  # where the data block starts
    return header


def _safetensors_tensor(path: str, header: dict[str, Any], name: str) -> np.ndarray:
    info = header[name]
    start, stop = (int(x) for x in info["data_offsets"])
    shape = tuple(int(s) for s in info["shape"])
    code = info["dtype"]
    offset = header["__header_size__"] + start
    if not 0 <= start <= stop or offset + stop - start > os.path.getsize(path):
        raise ValueError(f"{path}: tensor {name!r} lies outside the file (truncated or corrupt)")
    if code == "BF16":
        count = (stop - start) // 2
        if count != math.prod(shape):
            raise ValueError(f"{path}: tensor {name!r} has {count} entries for shape {shape}")
        check_memory(4 * count, f"{path}: tensor {name!r} widened to float32")
        raw = np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=(count,))
        # bfloat16 is the top half of a float32.
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if code not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {code}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[code])
    count = (stop - start) // dtype.itemsize
    if count != math.prod(shape):
        raise ValueError(f"{path}: tensor {name!r} has {count} entries for shape {shape}")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return arr.astype(np.float32) if code == "F16" else arr


class _LazySafetensors(Mapping):
    """Mapping name -> array that reads a tensor only when it is asked for."""

    def __init__(self, path: str):
        self.path = path
        self.header = read_safetensors_header(path)
        self.names = [k for k in self.header if k != "__header_size__"]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        return _safetensors_tensor(self.path, self.header, name)

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self.header[name]["shape"])


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Tensors and arrays of a nested dict/list, keyed by dotted paths."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{k}."))
    elif hasattr(obj, "shape") and hasattr(obj, "dtype"):
        out[prefix[:-1] or "tensor"] = obj
    return out


def _reason(exc: BaseException, limit: int = 160) -> str:
    """The informative part of a (possibly long, multi-line) loader message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_torch(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading torch files needs torch (pip install torch)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{path}: cannot load as torch weights ({_reason(exc)})") from None
    arrays = _flatten(obj)
    if not arrays:
        raise ValueError(f"{path}: no tensor found in {type(obj).__name__}")
    return arrays


def _load_text(path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        lines = [ln.split("#")[0].replace(",", " ").split() for ln in f]
    rows = [ln for ln in lines if ln]
    try:
        data = [[float(x) for x in row] for row in rows]
    except ValueError as exc:
        raise ValueError(f"{path}: not a table of numbers ({exc})") from None
    widths = {len(r) for r in data}
    if len(widths) > 1:
        raise ValueError(f"{path}: rows have different lengths {sorted(widths)}")
    arr = np.array(data, dtype=float)
    return arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr


def load_arrays(path: str | os.PathLike) -> Mapping[str, Any]:
    """All arrays of a file, by name (lazy for ``.safetensors``).

    Parameters
    ----------
    path : str or path-like
        A ``.npy``, ``.npz``, ``.pt``/``.pth``/``.bin``, ``.safetensors``,
        ``.txt`` or ``.csv`` file.

    Returns
    -------
    arrays : mapping of str to array
        Single-array formats use the name ``"array"``.
    """
    path = os.fspath(path)
    size = check_file(path)
    suffix = _suffix(path)
    if suffix == ".npy":
        return {"array": _load_npy(path, size)}
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".safetensors":
        return _LazySafetensors(path)
    if suffix in _TORCH_SUFFIXES:
        return _load_torch(path)
    if suffix in _TEXT_SUFFIXES:
        return {"array": _load_text(path)}
    raise ValueError(
        f"{path}: unknown file type {suffix or '(no suffix)'}; use .npy, .npz, .pt, .pth, "
        ".safetensors, .txt or .csv"
    )


def _shape(arrays: Mapping[str, Any], name: str) -> tuple[int, ...]:
    if isinstance(arrays, _LazySafetensors):
        return arrays.shape(name)
    return tuple(np.shape(arrays[name]))


def load_matrix(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A two-dimensional weight matrix from a file.

    Parameters
    ----------
    path : str or path-like
        See :func:`load_arrays` for the formats.
    key : str, optional
        Name of the array inside a container (``.npz``, state dict,
        ``.safetensors``). Needed when the file holds several 2-D arrays.

    Returns
    -------
    W : (rows, cols) ndarray of float
        In its stored floating precision (float16/bfloat16 widened to float32;
        integer types converted to float64). Not transposed.

    Raises
    ------
    KeyError
        ``key`` is not in the file; the message lists the names present.
    ValueError
        No or several 2-D candidates without ``key``, or the array is not 2-D.
    """
    path = os.fspath(path)
    arrays = load_arrays(path)
    if key is None:
        two_d = [k for k in arrays if len(_shape(arrays, k)) == 2]
        if len(two_d) != 1:
            what = "no 2-D array" if not two_d else "several 2-D arrays"
            names = {k: _Shape(_shape(arrays, k)) for k in arrays}
            raise ValueError(
                f"{path} holds {what}; choose one with key (--key) (arrays: {_describe(names)})"
            )
        key = two_d[0]
    elif key not in arrays:
        names = {k: _Shape(_shape(arrays, k)) for k in arrays}
        raise KeyError(f"key {key!r} not found in {path}; arrays: {_describe(names)}")
    W = _as_numpy(arrays[key])
    if W.ndim != 2:
        raise ValueError(f"{path}: array {key!r} must be 2-D, got shape {W.shape}")
    if W.dtype.kind not in "fiub":
        raise ValueError(f"{path}: array {key!r} must be real, got dtype {W.dtype}")
    if W.dtype.kind != "f":
        W = W.astype(np.float64)
    if not np.all(np.isfinite(W)):
        raise ValueError(f"{path}: array {key!r} has non-finite entries")
    return W


class _Shape:
    """Stand-in carrying only a shape, for listing arrays without reading them."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def load_vector(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A one-dimensional float vector (e.g. importances) from a file.

    Parameters
    ----------
    path : str or path-like
        ``.npy``, ``.npz``, ``.txt``/``.csv`` (one row, one column, or a
        flat list), or any format of :func:`load_arrays`.
    key : str, optional
        Array name inside a container.

    Returns
    -------
    v : (n,) ndarray of float64
    """
    path = os.fspath(path)
    arrays = load_arrays(path)
    if key is None:
        if len(arrays) != 1:
            names = {k: _Shape(_shape(arrays, k)) for k in arrays}
            raise ValueError(
                f"{path} holds several arrays; choose one (arrays: {_describe(names)})"
            )
        key = next(iter(arrays))
    elif key not in arrays:
        raise KeyError(f"key {key!r} not found in {path}")
    v = _as_numpy(arrays[key])
    if v.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected real numbers, got dtype {v.dtype}")
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 2 and 1 in v.shape:
        v = v.ravel()
    if v.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D vector, got shape {v.shape}")
    return v
