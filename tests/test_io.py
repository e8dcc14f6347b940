"""capalloc.io on damaged, huge and odd files: clear errors, nothing allocated first."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from capalloc import io as _io
from capalloc.io import check_file, check_memory, load_arrays, load_matrix, load_vector

LOADERS = [load_arrays, load_matrix, load_vector]


def _npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array(buf, array, version=version)
    return buf.getvalue()


def _header_only(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.fixture
def no_read(monkeypatch):
    """Fail the test if numpy is asked to read array data."""

    def refuse(*args, **kwargs):
        raise AssertionError("array data were read")

    monkeypatch.setattr(npy_format, "read_array", refuse)


# ----------------------------------------------------------------------------- .npy


@pytest.mark.parametrize("load", LOADERS)
def test_empty_npy(tmp_path, load):
    path = tmp_path / "empty.npy"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npy: empty file \(0 bytes\), not a \.npy"):
        load(path)


@pytest.mark.parametrize("load", LOADERS)
def test_truncated_npy_is_refused_before_reading(tmp_path, load, no_read):
    data = _npy_bytes(np.ones((4, 6)))
    path = tmp_path / "cut.npy"
    path.write_bytes(data[:-20])
    with pytest.raises(
        ValueError,
        match=r"cut\.npy: truncated or corrupt \.npy: the header "
        r"claims shape \(4, 6\) float64 \(192 bytes of data\) "
        r"but only 172 bytes follow",
    ):
        load(path)


@pytest.mark.parametrize("shape", [(10**6, 10**6), (10**12,), (2**40, 2**40, 2**40)])
def test_huge_claimed_shape_is_refused_without_allocating(tmp_path, shape, no_read):
    path = tmp_path / "huge.npy"
    path.write_bytes(_header_only(shape) + b"\0" * 64)
    with pytest.raises(ValueError, match="header claims shape .* but only 64 bytes follow"):
        load_matrix(path)


def test_array_larger_than_memory_is_refused(tmp_path, monkeypatch, no_read):
    path = tmp_path / "w.npy"
    np.save(path, np.zeros((64, 64)))  # 32 KiB of data
    monkeypatch.setattr(_io, "_available_memory", lambda: 10_000)
    with pytest.raises(
        ValueError,
        match=r"w\.npy: array of shape \(64, 64\) float64 needs "
        r"32768 bytes of memory; only 10000 bytes available",
    ):
        load_matrix(path)


def test_garbage_and_pickled_npy(tmp_path):
    path = tmp_path / "g.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <f8'")
    with pytest.raises(ValueError, match=r"g\.npy: not a \.npy array"):
        load_vector(path)
    path.write_bytes(_npy_bytes(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError, match="Python objects"):
        load_vector(path)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_format_version_still_loads(tmp_path, version):
    path = tmp_path / "v.npy"
    path.write_bytes(_npy_bytes(np.arange(6.0).reshape(2, 3), version))
    np.testing.assert_array_equal(load_matrix(path), np.arange(6.0).reshape(2, 3))


# ----------------------------------------------------------------------------- .npz


def _npz(tmp_path, **arrays) -> bytes:
    path = tmp_path / "src.npz"
    np.savez(path, **arrays)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["half", "garbage", "empty", "crc"])
@pytest.mark.parametrize("load", LOADERS)
def test_corrupt_npz(tmp_path, damage, load):
    data = bytearray(_npz(tmp_path, W=np.arange(64.0).reshape(8, 8)))
    if damage == "half":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"hello world")  # numpy alone calls this pickled data
    elif damage == "empty":
        data = bytearray()
    else:  # one byte of the stored array data: the CRC no longer matches
        data[200] ^= 0xFF
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.npz: not a valid \.npz archive"):
        load(path)


def test_npz_member_with_huge_claimed_shape(tmp_path, no_read):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("W.npy", _header_only((10**6, 10**6)))
    with pytest.raises(
        ValueError,
        match=r"huge\.npz: member 'W': truncated or corrupt \.npy: "
        r"the header claims shape \(1000000, 1000000\)",
    ):
        load_matrix(path)


def test_npz_member_that_is_not_npy(tmp_path):
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", b"just text, no array")
    with pytest.raises(ValueError, match=r"odd\.npz: member 'notes\.txt': not a \.npy array"):
        load_arrays(path)


def test_good_npz_still_loads(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, W=np.eye(2, 3), b=np.zeros(2))
    arrays = load_arrays(path)
    assert sorted(arrays) == ["W", "b"]
    np.testing.assert_array_equal(load_matrix(path), np.eye(2, 3))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_random_damage_gives_value_errors_only(tmp_path, suffix):
    src = tmp_path / f"src{suffix}"
    if suffix == ".npy":
        np.save(src, np.random.default_rng(0).normal(size=(5, 7)))
    else:
        np.savez_compressed(src, W=np.ones((5, 7)), b=np.arange(3))
    data = src.read_bytes()
    rng = random.Random(7)
    path = tmp_path / f"damaged{suffix}"
    for trial in range(300):
        damaged = bytearray(data)
        if trial % 2:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        try:
            load_arrays(path)
        except ValueError as exc:
            assert str(exc).startswith(str(path)) and len(str(exc)) < 400


# ----------------------------------------------------------------------------- .safetensors


def test_truncated_safetensors_tensor(tmp_path):
    pytest.importorskip("safetensors")
    header = json.dumps({"W": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}})
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 20)
    with pytest.raises(ValueError, match=r"cut\.safetensors: not a valid safetensors file"):
        load_matrix(path)


# ----------------------------------------------------------------------------- not files


@pytest.mark.parametrize("load", LOADERS)
def test_directory_is_not_no_such_file(tmp_path, load):
    folder = tmp_path / "weights.npy"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"weights\.npy: is a directory, not a file"):
        load(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("load", LOADERS)
def test_fifo_is_refused_without_blocking(tmp_path, load):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(OSError, match=r"pipe\.npy: is not a regular file \(a FIFO"):
        load(fifo)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npy: no such file"):
        load_vector(tmp_path / "nope.npy")
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_file(tmp_path / "dir" / "nope.npy")


def test_check_file_returns_the_size(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("1 2 3\n")
    assert check_file(path) == 6


# ----------------------------------------------------------------------------- check_memory


def test_check_memory(monkeypatch):
    monkeypatch.setattr(_io, "_available_memory", lambda: 16 * 2**30)
    check_memory(2**30, "one GiB")  # fits
    with pytest.raises(ValueError, match=r"^x needs 32 GiB of memory; only 16 GiB available$"):
        check_memory(32 * 2**30, "x")
    with pytest.raises(ValueError, match=r"needs 14\.6 TiB"):
        check_memory(4 * 10**10 * 400, "grid")
    with pytest.raises(ValueError, match=r"needs about 10\^402 bytes"):
        check_memory(10**402, "huge")
    monkeypatch.setattr(_io, "_available_memory", lambda: None)  # unknown: no check
    check_memory(10**402, "huge")


def test_available_memory_is_positive():
    avail = _io._available_memory()
    assert avail is None or avail > 0
