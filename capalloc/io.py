"""Reading weight matrices and importance vectors from files.

Supported containers
--------------------
``.npy``
    One array; :func:`open_matrix` memory-maps it (nothing is read up front).
``.npz``
    Several named arrays; ``key`` picks one.
``.pt`` / ``.pth`` / ``.pth.tar`` / ``.tar`` / ``.ckpt`` / ``.bin``
    A torch tensor or a (possibly nested) checkpoint, loaded with
    ``torch.load(..., weights_only=True)`` so no pickled code runs (memory-mapped
    where the file allows it). Nested dicts and lists are flattened with dotted
    keys (``"model.state_dict.atom_embedding.embedding.weight"``).
``.safetensors``
    Opened with the ``safetensors`` library (``pip install "capalloc[io]"``), which
    checks the header; the chosen tensor is then memory-mapped, so only the
    blocks being read are in memory. ``F16``, ``BF16``, ``F32`` and ``F64``
    tensors are read in their stored precision (bfloat16 widened to float32 a
    block at a time).
A directory (SAELens)
    ``cfg.json`` next to ``sae_weights.safetensors``: the decoder ``W_dec``
    (``n_features x d``, features along rows) unless ``key`` picks another tensor.
``.txt`` / ``.csv``
    Numbers separated by commas, whitespace or newlines.

Without ``key``, a container holding exactly one two-dimensional array gives
that array; otherwise the error lists the candidates and their shapes. A ``key``
may be any dotted suffix of a name that only one name ends with
(``"atom_embedding.embedding.weight"``).

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
import mmap
import os
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

__all__ = [
    "StoredMatrix",
    "check_file",
    "check_memory",
    "load_arrays",
    "load_matrix",
    "load_vector",
    "open_matrix",
]

_TORCH_SUFFIXES = (".pt", ".pth", ".pth.tar", ".tar", ".ckpt", ".bin")
_TEXT_SUFFIXES = (".txt", ".csv", ".tsv")
_SAE_CONFIG = "cfg.json"
_SAE_WEIGHTS = "sae_weights.safetensors"
_SAE_DECODER = "W_dec"

# safetensors dtype codes read through a numpy memory map (little endian), and their names.
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",  # widened to float32 by _BFloat16
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
_SAFETENSORS_NAMES = {"BF16": "bfloat16"}


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


def _npy_header(fh: IO[bytes], name: str, size: int, in_memory: bool = True) -> None:
    """Check the ``.npy`` stream ``fh`` (at its start, ``size`` bytes long) before reading it.

    Refuses, without allocating, a bad header, pickled objects, data shorter than
    the header's shape claims and (``in_memory``) arrays larger than the available
    memory.
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
    if in_memory:
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
    name = os.path.basename(str(path)).lower()
    for suffix in _TORCH_SUFFIXES:  # the one double suffix, .pth.tar, first
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


def _describe(arrays: Mapping[str, Any]) -> str:
    items = [f"{name} {tuple(np.shape(a))}" for name, a in arrays.items()]
    if len(items) > 12:
        items = items[:12] + [f"... ({len(arrays) - 12} more)"]
    return ", ".join(items) if items else "(none)"


def _is_torch(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "torch"


def _torch_dtype_name(value: Any) -> str:
    return str(value.dtype).removeprefix("torch.")


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a lazy array or a torch tensor (low precision widened)."""
    if _is_torch(value):
        import torch

        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.to(torch.float32)  # numpy has no bfloat16
        return t.numpy()
    arr = np.asarray(value)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr


def _drop_pages(view: np.ndarray, base: np.ndarray) -> None:
    """Drop the pages of ``view`` (part of the memory map ``base``) from this process.

    They stay in the page cache, so reading them again costs no disk access.
    """
    mm = getattr(base, "_mmap", None)
    if mm is None or view.size == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        lo = max(view.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data, 0)
        span = sum((s - 1) * abs(st) for s, st in zip(view.shape, view.strides, strict=True))
        hi = min(lo + span + view.itemsize, len(mm))
        lo -= lo % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, TypeError, BufferError):  # pragma: no cover - best effort
        pass


class _BFloat16:
    """A read-only 2-D bfloat16 memory map that slices into float32 numpy arrays."""

    dtype = np.dtype(np.float32)
    stored_dtype = "bfloat16"

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        self.shape = raw.shape
        self.ndim = raw.ndim

    def __getitem__(self, index: Any) -> np.ndarray:
        part = self.raw[index]
        out = (np.asarray(part, dtype=np.uint32) << 16).view(np.float32)  # the top half
        if isinstance(part, np.ndarray):
            _drop_pages(part, self.raw)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


class _Safetensors(Mapping):
    """Tensors of a ``.safetensors`` file by name, each memory-mapped when it is asked for.

    The ``safetensors`` library opens the file and checks its header (offsets,
    sizes, dtypes); the data of a tensor are then mapped by numpy at the offset
    the header gives, so a pass over a tensor larger than memory holds only the
    block being read.
    """

    def __init__(self, path: str):
        try:
            from safetensors import safe_open
        except ImportError:
            raise ValueError(
                f"{path}: reading .safetensors needs the safetensors package "
                '(pip install "capalloc[io]")'
            ) from None
        self.path = path
        try:
            with safe_open(path, framework="numpy") as f:
                self.names = list(f.keys())
                slices = {k: f.get_slice(k) for k in self.names}
                self.shapes = {k: tuple(int(s) for s in v.get_shape()) for k, v in slices.items()}
                self.codes = {k: v.get_dtype() for k, v in slices.items()}
        except Exception as exc:  # noqa: BLE001 - SafetensorError derives from Exception only
            raise ValueError(f"{path}: not a valid safetensors file ({_reason(exc)})") from None
        with open(path, "rb") as f:  # the library checked it: 8-byte length, JSON header
            (size,) = struct.unpack("<Q", f.read(8))
            self.header = json.loads(f.read(size).decode("utf-8"))
        self.data_start = 8 + size

    def __getitem__(self, name: str) -> Any:
        if name not in self.shapes:
            raise KeyError(name)
        code, shape = self.codes[name], self.shapes[name]
        if code not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[code])
        start, _ = (int(x) for x in self.header[name]["data_offsets"])
        if math.prod(shape) == 0:
            raw = np.zeros(shape, dtype=dtype)
        else:
            raw = np.memmap(
                self.path, dtype=dtype, mode="r", offset=self.data_start + start, shape=shape
            )
        return _BFloat16(raw) if code == "BF16" else raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def stored_dtype(self, name: str) -> str:
        code = self.codes[name]
        if code in _SAFETENSORS_NAMES:
            return _SAFETENSORS_NAMES[code]
        return str(np.dtype(_SAFETENSORS_DTYPES[code])) if code in _SAFETENSORS_DTYPES else code


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


def _load_torch(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading torch files needs torch (pip install torch)") from None

    def load(use_mmap: bool) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)

    try:
        try:
            obj = load(True)  # tensors stay in the file until they are read
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = load(False)  # the legacy (non-zip) format cannot be mapped
    except OSError:
        raise
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{path}: cannot load as torch weights ({_reason(exc)})") from None
    arrays = _flatten(obj)
    if not arrays:
        raise ValueError(f"{path}: no tensor found in {type(obj).__name__}")
    return arrays


def _sae_directory(path: str) -> tuple[str, dict[str, Any]]:
    """The weights file and configuration of a SAELens directory; ``OSError`` otherwise."""
    weights = os.path.join(path, _SAE_WEIGHTS)
    config = os.path.join(path, _SAE_CONFIG)
    if not os.path.isfile(weights):
        present = sorted(os.listdir(path))[:8]
        raise IsADirectoryError(
            f"{path}: is a directory, not a file, and holds no SAE weights ({_SAE_CONFIG} "
            f"and {_SAE_WEIGHTS}); it contains: {', '.join(present) or '(nothing)'}"
        )
    cfg: dict[str, Any] = {}
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                loaded = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{config}: not a JSON configuration ({_reason(exc)})") from None
        cfg = loaded if isinstance(loaded, dict) else {}
    return weights, cfg


def load_arrays(path: str | os.PathLike) -> Mapping[str, Any]:
    """All arrays of a file, by name (lazy and memory-mapped for ``.safetensors``).

    Parameters
    ----------
    path : str or path-like
        A ``.npy``, ``.npz``, torch (``.pt``, ``.pth``, ``.pth.tar``, ``.ckpt``,
        ``.bin``), ``.safetensors``, ``.txt`` or ``.csv`` file, or a SAELens directory.

    Returns
    -------
    arrays : mapping of str to array
        Single-array formats use the name ``"array"``; torch tensors are returned
        as they are stored.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _Safetensors(_sae_directory(path)[0])
    size = check_file(path)
    suffix = _suffix(path)
    if suffix == ".npy":
        return {"array": _load_npy(path, size)}
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".safetensors":
        return _Safetensors(path)
    if suffix in _TORCH_SUFFIXES:
        return _load_torch(path)
    if suffix in _TEXT_SUFFIXES:
        return {"array": _load_text(path)}
    raise ValueError(
        f"{path}: unknown file type {suffix or '(no suffix)'}; use .npy, .npz, .pt, .pth, "
        ".pth.tar, .ckpt, .bin, .safetensors, .txt, .csv or a SAELens directory"
    )


def _shape(arrays: Mapping[str, Any], name: str) -> tuple[int, ...]:
    if isinstance(arrays, _Safetensors):
        return arrays.shape(name)
    return tuple(np.shape(arrays[name]))


class _Shape:
    """Stand-in carrying only a shape, for listing arrays without reading them."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def _listing(arrays: Mapping[str, Any]) -> str:
    return _describe({k: _Shape(_shape(arrays, k)) for k in arrays})


def _resolve_key(arrays: Mapping[str, Any], key: str, path: str) -> str:
    """``key`` itself, or the one name that ends with ``"." + key``; ``KeyError`` listing names."""
    if key in arrays:
        return key
    matches = [k for k in arrays if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    what = f"several names end with {key!r}" if matches else f"key {key!r} not found in {path}"
    raise KeyError(f"{what}; arrays: {_listing(arrays)}")


@dataclass(frozen=True)
class StoredMatrix:
    """A two-dimensional weight matrix in a file, opened without reading it.

    Attributes
    ----------
    path : str
        The file (or SAELens directory).
    key : str or None
        Name of the array in its container (resolved from a dotted suffix).
    array : (rows, cols) array-like
        A numpy memory map (``.npy``, ``.safetensors``), a numpy array, or a lazy
        bfloat16 map: float16, float32 and float64 in their stored precision,
        bfloat16 sliced into float32. It can be passed to
        :func:`capalloc.capacity` directly, which reads it a block at a time.
    stored_dtype : str
        The dtype in the file (``"bfloat16"``, ``"float16"``, ...).
    features_axis : int or None
        Which axis indexes features when the format says so (0 for a SAELens
        ``W_dec``), else ``None``.
    config : dict
        The SAELens ``cfg.json`` (empty for other formats).
    """

    path: str
    key: str | None
    array: Any
    stored_dtype: str
    features_axis: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` as stored."""
        rows, cols = self.array.shape
        return int(rows), int(cols)

    @property
    def where(self) -> str:
        """``"KEY in PATH"`` (or ``PATH`` for single-array files)."""
        return f"{self.key} in {self.path}" if self.key else self.path


def _check_stored(value: Any, path: str, key: str | None) -> tuple[Any, str]:
    """The matrix and its stored dtype name, refusing non-2-D and non-float arrays."""
    what = f"{path}: array {key!r}" if key else f"{path}: the array"
    shape = tuple(np.shape(value))
    if _is_torch(value):
        stored = _torch_dtype_name(value)
        if not value.is_floating_point():
            raise ValueError(f"{what} has dtype {stored}; capacity needs floating-point weights")
    else:
        stored = getattr(value, "stored_dtype", None) or str(np.dtype(value.dtype))
        if np.dtype(value.dtype).kind != "f":
            raise ValueError(
                f"{what} has dtype {stored}; capacity needs floating-point weights "
                "(dequantize integer weights first)"
            )
    if len(shape) != 2:
        raise ValueError(
            f"{what} has shape {shape} ({len(shape)}-D); a weight matrix needs 2 dimensions"
        )
    if _is_torch(value):
        import torch

        t = value.detach().cpu()
        value = t.to(torch.float32).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return value, stored


def open_matrix(path: str | os.PathLike, key: str | None = None) -> StoredMatrix:
    """Open a two-dimensional weight matrix in a file without reading its data.

    Parameters
    ----------
    path : str or path-like
        See :func:`load_arrays` for the formats; ``.npy`` and ``.safetensors``
        are memory-mapped, torch files where their format allows it.
    key : str, optional
        Name of the array inside a container, or a dotted suffix that only one
        name ends with. Needed when the file holds several 2-D arrays (a
        SAELens directory defaults to ``W_dec``).

    Returns
    -------
    StoredMatrix

    Raises
    ------
    KeyError
        ``key`` is not in the file; the message lists the names present, with shapes.
    ValueError
        No or several 2-D candidates without ``key``; the array is not 2-D or not
        of a floating-point dtype; the file is damaged.
    OSError
        No such file; a directory without SAE weights.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from capalloc.io import open_matrix
    >>> path = os.path.join(tempfile.mkdtemp(), "W_dec.npy")
    >>> np.save(path, np.ones((1000, 16), dtype=np.float16))
    >>> m = open_matrix(path)
    >>> m.shape, m.stored_dtype, type(m.array).__name__
    ((1000, 16), 'float16', 'memmap')
    """
    path = os.fspath(path)
    features_axis: int | None = None
    config: dict[str, Any] = {}
    if os.path.isdir(path):
        weights, config = _sae_directory(path)
        arrays: Mapping[str, Any] = _Safetensors(weights)
        if key is None and _SAE_DECODER in arrays:
            key, features_axis = _SAE_DECODER, 0
    elif _suffix(path) == ".npy":
        size = check_file(path)
        with open(path, "rb") as fh:
            _npy_header(fh, path, size, in_memory=False)
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        value, stored = _check_stored(array, path, None)
        return StoredMatrix(path, None, value, stored)
    else:
        arrays = load_arrays(path)
    if key is None:
        two_d = [k for k in arrays if len(_shape(arrays, k)) == 2]
        if len(two_d) != 1:
            what = "no 2-D array" if not two_d else "several 2-D arrays"
            raise ValueError(
                f"{path} holds {what}; choose one with key (--key) (arrays: {_listing(arrays)})"
            )
        key = two_d[0]
    else:
        key = _resolve_key(arrays, key, path)
    if key == _SAE_DECODER and config:
        features_axis = 0
    value, stored = _check_stored(arrays[key], path, key if len(arrays) > 1 else None)
    name = key if not (len(arrays) == 1 and key == "array") else None
    return StoredMatrix(path, name, value, stored, features_axis, dict(config))


def load_matrix(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A two-dimensional weight matrix from a file, read into memory.

    Parameters
    ----------
    path : str or path-like
        See :func:`load_arrays` for the formats.
    key : str, optional
        As for :func:`open_matrix`.

    Returns
    -------
    W : (rows, cols) ndarray of float
        In its stored floating precision (float16/bfloat16 widened to float32).
        Not transposed. :func:`open_matrix` gives the same matrix without reading
        it, for files larger than memory.

    Raises
    ------
    KeyError
        ``key`` is not in the file; the message lists the names present.
    ValueError
        As for :func:`open_matrix`; also non-finite entries and matrices larger
        than the available memory.
    """
    stored = open_matrix(path, key)
    where = f"{stored.path}: array {stored.key!r}" if stored.key else f"{stored.path}: the array"
    rows, cols = stored.shape
    itemsize = max(4, np.dtype(stored.array.dtype).itemsize)
    check_memory(
        rows * cols * itemsize,
        f"{stored.path}: array of shape {stored.shape} {stored.stored_dtype}",
    )
    W = _as_numpy(stored.array)
    if isinstance(W, np.memmap) or not W.flags.owndata:
        W = np.array(W)
    if not np.all(np.isfinite(W)):
        raise ValueError(f"{where} has non-finite entries")
    return W


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
