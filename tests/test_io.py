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
from capalloc.io import check_file, check_memory, load_arrays, load_matrix, load_vector, open_matrix

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


# ----------------------------------------------------------------------------- open_matrix


def test_npy_is_memory_mapped_without_the_memory_check(tmp_path, monkeypatch, no_read):
    path = tmp_path / "w.npy"
    np.save(path, np.arange(12.0, dtype=np.float16).reshape(4, 3))
    monkeypatch.setattr(_io, "_available_memory", lambda: 10)  # mapping needs no memory
    m = open_matrix(path)
    assert isinstance(m.array, np.memmap) and m.stored_dtype == "float16"
    assert m.shape == (4, 3) and m.key is None and m.where == str(path)
    np.testing.assert_array_equal(np.asarray(m.array), np.arange(12.0).reshape(4, 3))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_safetensors_memory_mapped_in_its_stored_dtype(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    W = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    path = tmp_path / "w.safetensors"
    st.save_file({"W_dec": W, "b_dec": torch.zeros(8)}, path)
    m = open_matrix(path, "W_dec")
    assert m.stored_dtype == dtype and m.shape == (50, 8)
    expected = W.float().numpy()
    np.testing.assert_array_equal(np.asarray(m.array[:], dtype=np.float32), expected)
    np.testing.assert_array_equal(np.asarray(m.array[10:20]), expected[10:20])
    np.testing.assert_array_equal(load_matrix(path, "W_dec"), expected)


def test_safetensors_without_torch(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    W = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    path = tmp_path / "w.safetensors"
    st.save_file({"enc": W, "b": np.zeros(4, np.float32)}, path)
    m = open_matrix(path)
    assert isinstance(m.array, np.memmap) and m.key == "enc"
    np.testing.assert_array_equal(m.array, W)


def test_corrupt_safetensors_header(tmp_path):
    pytest.importorskip("safetensors")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 9) + b"{garbage}")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a valid safetensors file"):
        open_matrix(path)


def _sae_dir(tmp_path, W_dec, cfg=True):
    st = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "sae"
    folder.mkdir()
    d_sae, d_in = W_dec.shape
    st.save_file(
        {"W_dec": W_dec, "W_enc": np.ascontiguousarray(W_dec.T), "b_dec": np.zeros(d_in)},
        folder / "sae_weights.safetensors",
    )
    if cfg:
        (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": d_sae}))
    return folder


def test_saelens_directory_picks_the_decoder(tmp_path):
    W_dec = np.random.default_rng(1).standard_normal((40, 8))
    folder = _sae_dir(tmp_path, W_dec)
    m = open_matrix(folder)
    assert (m.key, m.features_axis, m.shape) == ("W_dec", 0, (40, 8))
    assert m.config == {"d_in": 8, "d_sae": 40}
    np.testing.assert_array_equal(m.array, W_dec)
    enc = open_matrix(folder, "W_enc")
    assert enc.features_axis is None and enc.shape == (8, 40)
    np.testing.assert_array_equal(load_matrix(folder), W_dec)


@pytest.mark.parametrize("load", [open_matrix, load_matrix, load_arrays])
def test_directory_without_weights(tmp_path, load):
    folder = tmp_path / "empty_sae"
    folder.mkdir()
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(IsADirectoryError, match=r"holds no SAE weights .* contains: notes\.txt"):
        load(folder)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pth.tar", ".ckpt", ".bin"])
def test_torch_checkpoints_with_nested_keys(tmp_path, suffix):
    torch = pytest.importorskip("torch")
    E = torch.randn(94, 16, generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"model{suffix}"
    checkpoint = {
        "model": {"state_dict": {"atom_embedding.embedding.weight": E, "fc.weight": E[:3]}},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "epoch": 3,
    }
    torch.save(checkpoint, path)
    full = "model.state_dict.atom_embedding.embedding.weight"
    for key in (full, "atom_embedding.embedding.weight", "embedding.weight"):
        m = open_matrix(path, key)
        assert m.key == full and m.stored_dtype == "float32"
        np.testing.assert_array_equal(m.array, E.numpy())
    with pytest.raises(KeyError, match=r"several names end with 'weight'"):
        open_matrix(path, "weight")
    with pytest.raises(KeyError, match=r"'nope' not found.*fc\.weight \(3, 16\)"):
        open_matrix(path, "nope")


def test_legacy_torch_format_loads_without_mmap(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "old.pt"
    torch.save({"w": torch.eye(3, dtype=torch.float64)}, path, _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(open_matrix(path).array, np.eye(3))


def test_one_dimensional_and_integer_arrays_are_refused(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, v=np.ones(5), q=np.ones((3, 4), dtype=np.int8), W=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"array 'v' has shape \(5,\) \(1-D\); a weight matrix"):
        open_matrix(path, "v")
    with pytest.raises(ValueError, match=r"array 'q' has dtype int8; capacity needs floating"):
        load_matrix(path, "q")
    assert open_matrix(path, "W").shape == (3, 4)


def test_load_matrix_reads_into_memory_and_checks_finite(tmp_path):
    path = tmp_path / "w.npy"
    A = np.ones((3, 4), dtype=np.float16)
    A[1, 2] = np.inf
    np.save(path, A)
    with pytest.raises(ValueError, match="non-finite entries"):
        load_matrix(path)
    np.save(path, np.ones((3, 4), dtype=np.float16))
    W = load_matrix(path)
    assert type(W) is np.ndarray and W.dtype == np.float32 and W.flags.writeable
