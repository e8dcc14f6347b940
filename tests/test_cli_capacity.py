"""``capalloc capacity``: the report, tables, exports, SAELens directories and bad input.

Expected values come from the naive Gram formula and an SVD computed here.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from capalloc.cli.main import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def naive_capacity(W: np.ndarray) -> np.ndarray:
    G = W.T @ W
    N = np.diag(G)
    den = np.sum(G * G, axis=1)
    return np.divide(N**2, den, out=np.zeros_like(den), where=den > 0)


def svd_leverage(W: np.ndarray) -> np.ndarray:
    _, s, Vt = np.linalg.svd(W, full_matrices=False)
    return np.sum(Vt[s > 1e-8 * s.max()] ** 2, axis=0)


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _text(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def _error(capsys, argv) -> str:
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capalloc: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.fixture
def decoder(tmp_path):
    """60 features stored as rows (n x d = 60 x 8), with a shared mean direction."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((60, 8)) + 3.0 * rng.standard_normal(8)
    path = tmp_path / "W_dec.npy"
    np.save(path, A)
    return path, A


def test_summary_has_leverage_gap_and_spectrum(capsys, decoder):
    path, A = decoder
    W = A.T
    C, lev = naive_capacity(W), svd_leverage(W)
    s = np.linalg.svd(W, compute_uv=False)
    data = _json(capsys, ["capacity", str(path), "--json"])
    assert (data["d"], data["n"], data["features_axis"]) == (8, 60, 0)
    np.testing.assert_allclose(data["capacity"], C, rtol=1e-10)
    np.testing.assert_allclose(data["leverage"], lev, atol=1e-10)
    np.testing.assert_allclose(data["norms"], np.sum(A * A, axis=1), rtol=1e-12)
    assert data["sum_leverage"] == pytest.approx(8.0) and data["rank"] == 8
    assert data["gap"] == pytest.approx(8.0 - C.sum())
    assert data["top_share"] == pytest.approx(s[0] ** 2 / np.sum(s**2))
    assert data["effective_rank"] == pytest.approx(np.sum(s**2) ** 2 / np.sum(s**4))
    assert data["stored_dtype"] == "float64" and data["centered"] is False
    out = _text(capsys, ["capacity", str(path)])
    assert f"Σ leverage = {lev.sum():.6g}; gap Σ(ℓ - C) = {8 - C.sum():.6g}" in out
    assert "top singular direction holds" in out and "try --center" in out


def test_center_option(capsys, decoder):
    path, A = decoder
    Wc = (A - A.mean(axis=0)).T
    data = _json(capsys, ["capacity", str(path), "--center", "--json"])
    assert data["centered"] is True
    np.testing.assert_allclose(data["capacity"], naive_capacity(Wc), rtol=1e-10)
    assert data["rank"] == 8
    out = _text(capsys, ["capacity", str(path), "--center"])
    assert "mean feature removed (--center)" in out and "try --center" not in out


def test_top_and_bottom_tables(capsys, decoder):
    path, A = decoder
    C, lev = naive_capacity(A.T), svd_leverage(A.T)
    out = _text(capsys, ["capacity", str(path), "--top", "3", "--bottom", "2"])
    lines = out.splitlines()
    top = lines.index("top 3 features by capacity:")
    rows = [line.split() for line in lines[top + 2 : top + 5]]
    best = np.argsort(-C)[:3]
    assert [int(r[0]) for r in rows] == best.tolist()
    for r, i in zip(rows, best, strict=True):
        assert float(r[1]) == pytest.approx(C[i], abs=1e-6)
        assert float(r[2]) == pytest.approx(lev[i], abs=1e-6)
        assert float(r[3]) == pytest.approx(np.linalg.norm(A[i]), rel=1e-5)
    bottom = lines.index("bottom 2 features by capacity:")
    assert [int(line.split()[0]) for line in lines[bottom + 2 : bottom + 4]] == np.argsort(C)[
        :2
    ].tolist()


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_per_feature_export(capsys, tmp_path, decoder, suffix):
    path, A = decoder
    C, lev = naive_capacity(A.T), svd_leverage(A.T)
    target = tmp_path / f"features{suffix}"
    out = _text(capsys, ["capacity", str(path), "--out", str(target)])
    assert f"per-feature table written to {target}" in out
    if suffix == ".npy":
        table = np.load(target, allow_pickle=False)
        feature, cap, levs, norm = (
            table["feature"],
            table["capacity"],
            table["leverage"],
            table["norm"],
        )
        labels = table["label"].tolist()
    else:
        with open(target, newline="") as f:
            rows = list(csv.DictReader(f))
        feature = np.array([int(r["feature"]) for r in rows])
        cap, levs, norm = (
            np.array([float(r[k]) for r in rows]) for k in ("capacity", "leverage", "norm")
        )
        labels = [r["label"] for r in rows]
    np.testing.assert_array_equal(feature, np.arange(60))
    np.testing.assert_allclose(cap, C, rtol=1e-10)
    np.testing.assert_allclose(levs, lev, atol=1e-10)
    np.testing.assert_allclose(norm, np.linalg.norm(A, axis=1), rtol=1e-12)
    assert set(labels) == {"polysemantic"}


@pytest.mark.parametrize("scale", ["auto", "log", "unit"])
def test_histogram_ranges(capsys, tmp_path, decoder, scale):
    pytest.importorskip("matplotlib")
    path, _ = decoder
    target = tmp_path / f"h_{scale}.png"
    argv = ["capacity", str(path), "--hist", str(target), "--hist-range", scale, "--bins", "7"]
    assert "figure written" in _text(capsys, argv)
    assert target.read_bytes()[:8] == PNG_MAGIC


def test_histogram_bars_follow_labels_and_range(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from capalloc import capacity_report
    from capalloc.cli.capacity import _histogram

    W = np.zeros((4, 9))
    W[:2, :5] = np.stack(
        [np.cos(2 * np.pi * np.arange(5) / 5), np.sin(2 * np.pi * np.arange(5) / 5)]
    )
    W[2, 5] = W[3, 6] = 1.0  # two monosemantic features; columns 7, 8 are zero (ignored)
    report = capacity_report(W)
    for scale in ("auto", "log", "unit"):
        ax = Figure().subplots()
        _histogram(ax, report, scale, 10)
        names = [t.get_text() for t in ax.get_legend().get_texts()]
        heights = {
            name: sum(p.get_height() for p in c.patches)
            for name, c in zip(names, ax.containers, strict=True)
        }
        expected = {"monosemantic": 2, "polysemantic": 5, "ignored": 2}
        if scale == "log":
            expected.pop("ignored")  # C = 0 has no place on a log axis
            assert ax.get_xscale() == "log"
        assert heights == expected


def test_saelens_directory_report(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(3)
    W_dec = rng.standard_normal((200, 16)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    folder = tmp_path / "sae"
    folder.mkdir()
    st.save_file(
        {"W_dec": W_dec, "W_enc": np.ascontiguousarray(W_dec.T)}, folder / "sae_weights.safetensors"
    )
    (folder / "cfg.json").write_text(
        json.dumps({"d_in": 16, "d_sae": 200, "architecture": "standard"})
    )
    out = _text(capsys, ["capacity", str(folder)])
    assert f"capacity report: W_dec in {folder}" in out
    assert "SAELens directory (d_in 16, d_sae 200, architecture standard)" in out
    assert "features along axis 0 (SAELens W_dec) -> d = 16 dimensions, n = 200 features" in out
    data = _json(capsys, ["capacity", str(folder), "--json"])
    np.testing.assert_allclose(
        data["capacity"], naive_capacity(W_dec.T.astype(np.float64)), rtol=1e-9
    )
    assert data["stored_dtype"] == "float32"


def test_stored_dtype_is_the_file_dtype(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    W = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    for name in ("bfloat16", "float16"):
        path = tmp_path / f"{name}.safetensors"
        st.save_file({"w": W.to(getattr(torch, name))}, path)
        data = _json(capsys, ["capacity", str(path), "--json"])
        assert data["stored_dtype"] == name
        ref = naive_capacity(W.to(getattr(torch, name)).double().numpy().T)
        np.testing.assert_allclose(data["capacity"], ref, rtol=1e-9)


def test_blocks_with_center_and_progress(capsys, tmp_path):
    W = np.zeros((3, 5))
    W[:2, :3] = np.stack(
        [np.cos(2 * np.pi * np.arange(3) / 3), np.sin(2 * np.pi * np.arange(3) / 3)]
    )
    W[2, 3] = 1.0
    path = tmp_path / "blocks.npy"
    np.save(path, W)
    capsys.readouterr()
    assert main(["capacity", str(path), "--blocks", "--progress", "--features-axis", "1"]) == 0
    assert "blocks: 2" in capsys.readouterr().out


def test_large_dimension_skips_leverage_unless_asked(capsys, tmp_path, monkeypatch):
    from capalloc.cli import capacity as cli_capacity

    monkeypatch.setattr(cli_capacity, "_LEVERAGE_MAX_D", 4)
    path = tmp_path / "w.npy"
    W = np.random.default_rng(1).standard_normal((6, 30))
    np.save(path, W)
    data = _json(capsys, ["capacity", str(path), "--json"])
    assert data["leverage"] is None and data["rank"] is None and data["gap"] is None
    np.testing.assert_allclose(data["capacity"], naive_capacity(W), rtol=1e-10)
    assert "pass --rank" in _text(capsys, ["capacity", str(path)])
    assert _json(capsys, ["capacity", str(path), "--rank", "--json"])["rank"] == 6


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    npz = tmp_path / "w.npz"
    np.savez(npz, v=np.ones(4), q=np.ones((3, 3), dtype=np.int32), W=np.ones((3, 4)))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x09\x00\x00\x00\x00\x00\x00\x00{garbage}")
    ok = str(npz)
    cases = {
        "unknown key": (["capacity", ok, "--key", "nope"], r"'nope' not found .*v \(4,\)"),
        "1-D array": (["capacity", ok, "--key", "v"], r"\(1-D\); a weight matrix needs 2"),
        "integer dtype": (["capacity", ok, "--key", "q"], "needs floating-point weights"),
        "directory": (["capacity", str(empty)], "holds no SAE weights"),
        "corrupt safetensors": (["capacity", str(bad_st)], "not a valid safetensors file"),
        "out suffix": (
            ["capacity", ok, "--key", "W", "--out", str(tmp_path / "x.txt")],
            ".npy or .csv",
        ),
        "out directory": (
            ["capacity", ok, "--key", "W", "--out", str(tmp_path / "no/x.npy")],
            "does not exist",
        ),
        "top": (["capacity", ok, "--key", "W", "--top", "-1"], "--top must be >= 0"),
        "bins": (["capacity", ok, "--key", "W", "--bins", "0"], "--bins must be a positive"),
        "tol": (
            ["capacity", ok, "--key", "W", "--blocks", "--tol", "2"],
            r"--tol must lie in \(0, 1\)",
        ),
        "max rows": (["capacity", ok, "--key", "W", "--max-rows", "-3"], "--max-rows must be >= 0"),
        "threads": (
            ["capacity", ok, "--key", "W", "--threads", "0"],
            "--threads must be a positive",
        ),
    }
    import re

    for name, (argv, pattern) in cases.items():
        line = _error(capsys, argv)
        assert re.search(pattern, line), (name, line)
        assert len(line) < 600, name
