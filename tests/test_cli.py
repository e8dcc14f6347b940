"""The ``capalloc`` command line: demo, solve, capacity, bench, experiment, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import capalloc
from capalloc.cli.main import build_parser, main, parse_vector, sparse_kurtosis

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _run_json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def _error(capsys, argv) -> str:
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("capalloc: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


# ----------------------------------------------------------------------------- demo


def _console_command() -> list[str]:
    exe = shutil.which("capalloc")
    return [exe] if exe else [sys.executable, "-m", "capalloc.cli.main"]


def test_console_script_demo(tmp_path):
    proc = subprocess.run(
        [*_console_command(), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "feature" in proc.stdout and "importance" in proc.stdout
    assert "monosemantic" in proc.stdout and "polysemantic" in proc.stdout
    if _has("matplotlib"):
        figure = tmp_path / "capalloc_demo.png"
        assert figure.read_bytes()[:8] == PNG_MAGIC
        assert figure.stat().st_size < 400_000


def test_demo_table_and_summary(tmp_path, capsys):
    out_file = tmp_path / "fig.png"
    assert main(["demo", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    rows = [
        ln.split()
        for ln in out.splitlines()
        if ln.strip()[:1].isdigit() and ln.split()[-1] in capalloc.LABELS
    ]
    assert len(rows) == 12
    expected = capalloc.solve(capalloc.QuadraticProblem(0.8 ** np.arange(12), d=5, kurtosis=15.0))
    np.testing.assert_allclose([float(r[2]) for r in rows], expected.capacity, atol=1e-4)
    assert [r[3] for r in rows] == expected.labels.tolist()
    assert "ΣC = 5 of d = 5" in out
    assert "2 monosemantic, 9 polysemantic, 1 ignored" in out
    assert f"threshold T = {expected.threshold:.6g}" in out
    if _has("matplotlib"):
        assert out_file.read_bytes()[:8] == PNG_MAGIC


def test_demo_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    target = tmp_path / "none.png"
    assert main(["demo", "-o", str(target)]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not target.exists()


def test_demo_no_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-figure"]) == 0
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- solve


@pytest.mark.parametrize(
    "spec, d, K",
    [
        ("1,0.8,0.64,0.5,0.3,0.1", 3, 15.0),
        ("geometric:0.9:30", 7, 5.0),
        ("powerlaw:1.1:50", 10, 2.0),
        ("uniform:20:3", 4, 3.0),
    ],
)
def test_solve_json_matches_library(capsys, spec, d, K):
    data = _run_json(
        capsys, ["solve", "--importance", spec, "--d", str(d), "--kurtosis", str(K), "--json"]
    )
    v = parse_vector(spec)
    res = capalloc.solve(capalloc.QuadraticProblem(v, d=d, kurtosis=K))
    np.testing.assert_allclose(data["importance"], v)
    np.testing.assert_allclose(data["capacity"], res.capacity, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["norms"], res.norms, rtol=1e-12, atol=1e-12)
    assert data["labels"] == res.labels.tolist()
    assert data["loss"] == pytest.approx(res.loss, rel=1e-12)
    assert data["threshold"] == pytest.approx(res.threshold, rel=1e-12)
    assert data["method"] == res.method and data["status"] == res.status == 0
    assert (data["d"], data["n"], data["kurtosis"]) == (d, v.size, K)
    assert data["kkt_residual"] == pytest.approx(res.kkt_residual, abs=1e-12)
    assert data["sum_capacity"] == pytest.approx(min(d, v.size))


def test_solve_method_option(capsys):
    method = "scipy" if "scipy" in capalloc.methods() else "waterfill"
    data = _run_json(
        capsys, ["solve", "-v", "geometric:0.7:10", "-d", "3", "-K", "8", "-m", method, "--json"]
    )
    assert data["method"] == method
    ref = capalloc.solve(capalloc.QuadraticProblem(0.7 ** np.arange(10), d=3, kurtosis=8.0))
    np.testing.assert_allclose(data["capacity"], ref.capacity, atol=1e-7)


def test_solve_text_table_truncates(capsys):
    assert main(["solve", "-v", "powerlaw:1:100", "-d", "10", "-S", "0.9", "--max-rows", "10"]) == 0
    out = capsys.readouterr().out
    assert "90 rows omitted" in out
    assert "K = 30" in out and "S = 0.9" in out
    assert "ΣC = 10 of d = 10" in out


def _table_rows(out: str) -> list[list[str]]:
    return [ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0].isdigit()]


def test_solve_table_shows_head_and_tail_rows(capsys):
    n, d, K = 50, 5, 8.0
    assert main(["solve", "-v", f"powerlaw:1:{n}", "-d", str(d), "-K", "8", "--max-rows", "6"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["feature", "importance", "capacity", "label"]
    assert lines[7] == "... 44 rows omitted (--max-rows 0 shows all)"
    rows = _table_rows(out)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4, 49]
    # importances v_i = 1 / (i + 1), printed with 6 significant digits
    assert [r[1] for r in rows] == ["1", "0.5", "0.333333", "0.25", "0.2", "0.02"]
    ref = capalloc.solve(capalloc.QuadraticProblem(1.0 / np.arange(1, n + 1), d=d, kurtosis=K))
    np.testing.assert_allclose(
        [float(r[2]) for r in rows], ref.capacity[[0, 1, 2, 3, 4, 49]], atol=5e-5
    )
    assert [r[3] for r in rows] == ref.labels[[0, 1, 2, 3, 4, 49]].tolist()
    counts = {lab: int(np.sum(ref.labels == lab)) for lab in capalloc.LABELS}
    assert ", ".join(f"{k} {lab}" for lab, k in counts.items()) in out
    assert main(["solve", "-v", f"powerlaw:1:{n}", "-d", str(d), "-K", "8", "--max-rows", "0"]) == 0
    everything = capsys.readouterr().out
    assert [int(r[0]) for r in _table_rows(everything)] == list(range(n))
    assert "omitted" not in everything


def test_solve_table_formats_only_the_rows_it_shows(capsys, monkeypatch):
    cli_main = sys.modules["capalloc.cli.main"]  # the package re-exports main(), not the module
    built = []
    original = cli_main._FeatureRows.__getitem__

    def counting(self, i):
        built.append(int(i))
        return original(self, i)

    monkeypatch.setattr(cli_main._FeatureRows, "__getitem__", counting)
    argv = ["solve", "-v", "geometric:0.99999:200000", "-d", "100", "-K", "4", "--max-rows", "8"]
    assert main(argv) == 0
    assert sorted(built) == [0, 1, 2, 3, 4, 5, 199998, 199999]
    assert "... 199992 rows omitted" in capsys.readouterr().out


def test_solve_json_streams_in_chunks_and_stays_valid(capsys, monkeypatch):
    import capalloc.cli._output as output

    sizes = []
    items = output._items

    def recording(a):
        sizes.append(a.size)
        return items(a)

    monkeypatch.setattr(output, "JSON_CHUNK", 7)
    monkeypatch.setattr(output, "_items", recording)
    n, d = 40, 6
    K = np.resize([2.0, 5.0], n)
    argv = ["solve", "-v", f"geometric:0.9:{n}", "-d", str(d), "-K", ",".join(map(str, K))]
    data = _run_json(capsys, [*argv, "--json"])
    assert max(sizes) == 7  # no list of more than a chunk was built
    v = 0.9 ** np.arange(n)
    ref = capalloc.solve(capalloc.QuadraticProblem(v, d=d, kurtosis=K))
    np.testing.assert_allclose(data["importance"], v, rtol=1e-15)
    assert data["kurtosis"] == K.tolist()
    np.testing.assert_allclose(data["capacity"], ref.capacity, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["norms"], ref.norms, rtol=1e-12, atol=1e-12)
    assert data["labels"] == ref.labels.tolist() and len(data["labels"]) == n
    assert data["counts"] == {lab: int(np.sum(ref.labels == lab)) for lab in capalloc.LABELS}
    assert data["sum_capacity"] == pytest.approx(d)


def test_streamed_json_is_the_text_json_dumps_gives():
    import io

    from capalloc.cli._output import Chunked, write_json

    x = np.array([0.1, np.nan, 3.0, -np.inf, 2.5e-300, 7.0])
    names = np.array(["a", "b", "c", "d", "e", "f"])
    buf = io.StringIO()
    obj = {"n": 6, "x": x, "ids": np.arange(6), "names": Chunked(6, lambda lo, hi: names[lo:hi])}
    write_json(
        {**obj, "nested": {"y": np.array([[1.0, np.inf]])}, "empty": np.zeros(0)}, buf, chunk=4
    )
    plain = {
        "n": 6,
        "x": [0.1, None, 3.0, None, 2.5e-300, 7.0],
        "ids": [0, 1, 2, 3, 4, 5],
        "names": ["a", "b", "c", "d", "e", "f"],
        "nested": {"y": [[1.0, None]]},
        "empty": [],
    }
    assert buf.getvalue() == json.dumps(plain) + "\n"
    assert json.loads(buf.getvalue()) == plain
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 0"):
        write_json({}, io.StringIO(), chunk=0)


def test_solve_plot_option(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "solve.png"
    assert main(["solve", "-v", "1,0.5,0.2", "-d", "1", "-K", "9", "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == PNG_MAGIC


def test_spec_list_and_generators():
    np.testing.assert_array_equal(parse_vector("3, 2,1"), [3.0, 2.0, 1.0])
    np.testing.assert_array_equal(parse_vector("2.5"), [2.5])
    np.testing.assert_allclose(parse_vector("geometric:0.8:5"), 0.8 ** np.arange(5))
    np.testing.assert_allclose(parse_vector("powerlaw:2:4"), [1, 1 / 4, 1 / 9, 1 / 16])
    np.testing.assert_allclose(parse_vector("constant:3:0.5"), [0.5, 0.5, 0.5])
    u = parse_vector("uniform:50:7")
    assert u.shape == (50,) and np.all((u >= 0) & (u < 1))
    np.testing.assert_array_equal(u, parse_vector("uniform:50:7"))
    assert not np.array_equal(u, parse_vector("uniform:50:8"))


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".csv", ".npz"])
def test_spec_files(tmp_path, capsys, suffix):
    v = np.array([1.0, 0.7, 0.4, 0.2, 0.05])
    path = tmp_path / f"v{suffix}"
    if suffix == ".npy":
        np.save(path, v)
    elif suffix == ".npz":
        np.savez(path, importance=v)
    elif suffix == ".csv":
        path.write_text(",".join(str(float(x)) for x in v) + "\n")
    else:
        path.write_text("\n".join(str(float(x)) for x in v) + "\n")
    np.testing.assert_array_equal(parse_vector(str(path)), v)
    data = _run_json(capsys, ["solve", "-v", str(path), "-d", "2", "-K", "6", "--json"])
    np.testing.assert_array_equal(data["importance"], v)


@pytest.mark.parametrize("S", [0.0, 0.5, 0.9, 0.99])
def test_sparsity_gives_kurtosis(capsys, S):
    data = _run_json(
        capsys, ["solve", "-v", "1,0.5,0.25", "-d", "1", "--sparsity", str(S), "--json"]
    )
    assert data["kurtosis"] == pytest.approx(3.0 / (1.0 - S), rel=1e-12)
    assert sparse_kurtosis(S, "uniform") == pytest.approx(1.8 / (1.0 - S), rel=1e-12)
    assert sparse_kurtosis(S, "rademacher") == pytest.approx(1.0 / (1.0 - S), rel=1e-12)


def test_sparsity_base_option(capsys):
    data = _run_json(
        capsys, ["solve", "-v", "1,0.5", "-d", "1", "-S", "0.5", "--base", "uniform", "--json"]
    )
    assert data["kurtosis"] == pytest.approx(3.6)


def test_per_feature_kurtosis(capsys):
    data = _run_json(capsys, ["solve", "-v", "1,1,1", "-d", "1", "-K", "2,5,9", "--json"])
    assert data["kurtosis"] == [2.0, 5.0, 9.0]
    ref = capalloc.solve(capalloc.QuadraticProblem([1, 1, 1], d=1, kurtosis=[2.0, 5.0, 9.0]))
    np.testing.assert_allclose(data["capacity"], ref.capacity, atol=1e-12)


# ----------------------------------------------------------------------------- capacity


def _weights(rng, d=6, n=40):
    W = rng.standard_normal((d, n))
    W[:, 3] = 0.0  # one ignored feature
    return W


def _write(tmp_path, fmt, W):
    """Write W (d, n) in format ``fmt``; return (path, key)."""
    if fmt == "npy":
        path = tmp_path / "w.npy"
        np.save(path, W)
        return path, None
    if fmt == "npz":
        path = tmp_path / "w.npz"
        np.savez(path, decoder=W, bias=np.zeros(W.shape[0]), other=W[:, :3])
        return path, "decoder"
    if fmt == "pt":
        torch = pytest.importorskip("torch")
        path = tmp_path / "w.pt"
        torch.save(
            {"model": {"embed.weight": torch.tensor(W), "embed.bias": torch.zeros(3)}, "step": 7},
            path,
        )
        return path, "model.embed.weight"
    if fmt == "safetensors":
        st = pytest.importorskip("safetensors.numpy")
        path = tmp_path / "w.safetensors"
        st.save_file({"W_dec": np.ascontiguousarray(W.T), "b_dec": np.zeros(W.shape[0])}, path)
        return path, "W_dec"  # stored (n, d): features along rows
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["npy", "npz", "pt", "safetensors"])
def test_capacity_formats(tmp_path, capsys, rng, fmt):
    W = _weights(rng)
    path, key = _write(tmp_path, fmt, W)
    argv = ["capacity", str(path), "--json"] + (["--key", key] if key else [])
    data = _run_json(capsys, argv)
    C = capalloc.capacity(W)
    assert (data["d"], data["n"]) == W.shape
    assert data["sum_capacity"] == pytest.approx(C.sum(), rel=1e-12)
    np.testing.assert_allclose(data["capacity"], C, atol=1e-12)
    assert data["counts"]["ignored"] == 1
    assert data["rank"] == 6 and data["rank_bound"] == 6
    for stat, f in (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max)):
        assert data[stat] == pytest.approx(f(C))


def test_capacity_torch_single_matrix_without_key(tmp_path, capsys, rng):
    torch = pytest.importorskip("torch")
    W = _weights(rng)
    path = tmp_path / "w.pth"
    torch.save({"weight": torch.tensor(W, dtype=torch.bfloat16), "bias": torch.zeros(6)}, path)
    data = _run_json(capsys, ["capacity", str(path), "--json"])
    W16 = torch.tensor(W, dtype=torch.bfloat16).float().numpy()
    assert data["sum_capacity"] == pytest.approx(capalloc.capacity(W16).sum(), rel=1e-9)


def test_capacity_safetensors_bf16(tmp_path, capsys, rng):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    W = torch.tensor(_weights(rng)).to(torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    st.save_file({"w": W}, path)
    data = _run_json(capsys, ["capacity", str(path), "--json"])
    assert data["sum_capacity"] == pytest.approx(
        capalloc.capacity(W.float().numpy()).sum(), rel=1e-9
    )


def test_capacity_features_axis(tmp_path, capsys, rng):
    A = rng.standard_normal((30, 4))  # 30 features stored as rows
    path = tmp_path / "rows.npy"
    np.save(path, A)
    auto = _run_json(capsys, ["capacity", str(path), "--json"])
    assert (auto["d"], auto["n"], auto["features_axis"]) == (4, 30, 0)
    assert auto["sum_capacity"] == pytest.approx(capalloc.capacity(A.T).sum())
    cols = _run_json(capsys, ["capacity", str(path), "--features-axis", "1", "--json"])
    assert (cols["d"], cols["n"]) == (30, 4)
    assert cols["sum_capacity"] == pytest.approx(capalloc.capacity(A).sum())


def test_capacity_text_report_and_histogram(tmp_path, capsys, rng):
    W = _weights(rng)
    path = tmp_path / "w.npy"
    np.save(path, W)
    hist = tmp_path / "hist.png"
    assert main(["capacity", str(path), "--hist", str(hist)]) == 0
    out = capsys.readouterr().out
    assert f"ΣC = {capalloc.capacity(W).sum():.6g}" in out
    assert "d = 6 dimensions, n = 40 features" in out
    assert "rank W = 6" in out and "1 ignored" in out
    if _has("matplotlib"):
        assert hist.read_bytes()[:8] == PNG_MAGIC


def test_json_stays_pure_with_figures(tmp_path, capsys, rng):
    pytest.importorskip("matplotlib")
    path = tmp_path / "w.npy"
    np.save(path, _weights(rng))
    assert main(["capacity", str(path), "--json", "--hist", str(tmp_path / "h.png")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 40
    assert "figure written" in captured.err
    assert (
        main(
            [
                "solve",
                "-v",
                "3,2,1",
                "-d",
                "1",
                "-K",
                "5",
                "--json",
                "--plot",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 3
    assert (tmp_path / "s.png").exists() and (tmp_path / "h.png").exists()


def test_capacity_exact_shapes(tmp_path, capsys):
    angles = 2 * np.pi * np.arange(5) / 5
    pentagon = np.stack([np.cos(angles), np.sin(angles)])
    path = tmp_path / "pentagon.csv"
    np.savetxt(path, pentagon, delimiter=",")
    data = _run_json(capsys, ["capacity", str(path), "--json"])
    np.testing.assert_allclose(data["capacity"], 0.4, atol=1e-12)
    assert data["sum_capacity"] == pytest.approx(2.0)


def test_float32_path_matches_capacity(tmp_path, capsys, rng):
    W = rng.standard_normal((24, 5000)) * np.exp(rng.uniform(-3, 3, 5000))  # spans 2 chunks+
    W[:, 17] = 0.0
    C32 = capalloc.capacity(W, dtype=np.float32)
    np.testing.assert_allclose(C32, capalloc.capacity(W), atol=2e-5)
    assert C32[17] == 0.0
    path = tmp_path / "w.npy"
    np.save(path, W.astype(np.float32))
    data = _run_json(capsys, ["capacity", str(path), "--dtype", "float32", "--json"])
    assert data["arithmetic"] == "float32"
    assert data["sum_capacity"] == pytest.approx(capalloc.capacity(W).sum(), rel=1e-5)


def test_float32_path_with_more_dimensions_than_features(rng):
    W = rng.standard_normal((300, 40)) * np.exp(rng.uniform(-2, 2, 40))
    W[:, 5] = 0.0
    np.testing.assert_allclose(
        capalloc.capacity(W, dtype=np.float32), capalloc.capacity(W), atol=2e-5
    )


def test_capacity_blocks(tmp_path, capsys):
    if not _has("capalloc.geometry"):
        line = _error(capsys, ["capacity", os.devnull + ".npy", "--blocks"])
        assert "geometry" in line
        pytest.skip("capalloc.geometry not available yet")
    angles = 2 * np.pi * np.arange(3) / 3
    W = np.zeros((3, 5))
    W[:2, :3] = np.stack([np.cos(angles), np.sin(angles)])  # a triangle block
    W[2, 3] = 1.0  # a monosemantic feature
    path = tmp_path / "blocks.npy"
    np.save(path, W)
    data = _run_json(capsys, ["capacity", str(path), "--blocks", "--json"])
    sizes = sorted((b["dim"], b["size"]) for b in data["blocks"])
    assert sizes == [(1, 1), (2, 3)]
    assert main(["capacity", str(path), "--blocks"]) == 0
    assert "blocks: 2" in capsys.readouterr().out


@pytest.mark.slow
def test_capacity_sae_decoder_size(tmp_path, capsys):
    """A 16384 x 4096 decoder (features along rows, as SAEs store W_dec) runs in seconds."""
    import time

    rng = np.random.default_rng(0)
    path = tmp_path / "W_dec.npy"
    np.save(path, rng.standard_normal((16384, 4096), dtype=np.float32))
    start = time.perf_counter()
    data = _run_json(capsys, ["capacity", str(path), "--json"])
    elapsed = time.perf_counter() - start
    assert (data["d"], data["n"]) == (4096, 16384)
    assert data["arithmetic"] == "float32"
    # Random Gaussian columns: C_i is close to 1 / (1 + (n - 1)/d).
    assert data["mean"] == pytest.approx(1 / (1 + 16383 / 4096), rel=0.02)
    assert elapsed < 300


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_exit_2(tmp_path, capsys):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file")
    cube = tmp_path / "cube.npy"
    np.save(cube, np.zeros((2, 2, 2)))
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"\x80\x04not a pickle")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    npz = tmp_path / "two.npz"
    np.savez(npz, a=np.eye(2), b=np.eye(3))
    cases = {
        "no such file": ["capacity", str(tmp_path / "missing.npy")],
        "garbage npy": ["capacity", str(garbage)],
        "3-D array": ["capacity", str(cube)],
        "not a pickle": ["capacity", str(bad_pt)],
        "bad safetensors": ["capacity", str(bad_st)],
        "missing key": ["capacity", str(npz), "--key", "nope"],
        "ambiguous": ["capacity", str(npz)],
        "suffix": ["capacity", str(tmp_path / "w.xyz")],
        "bad list": ["solve", "-v", "1,x,3", "-d", "1", "-K", "4"],
        "empty entry": ["solve", "-v", "1,,3", "-d", "1", "-K", "4"],
        "bad generator": ["solve", "-v", "zipf:2:10", "-d", "1", "-K", "4"],
        "bad N": ["solve", "-v", "geometric:0.5:-3", "-d", "1", "-K", "4"],
        "negative importance": ["solve", "-v", "1,-2", "-d", "1", "-K", "4"],
        "d < 0": ["solve", "-v", "1,2", "-d", "-1", "-K", "4"],
        "kurtosis < 1": ["solve", "-v", "1,2", "-d", "1", "-K", "0.5"],
        "kurtosis length": ["solve", "-v", "1,2", "-d", "1", "-K", "3,4,5"],
        "sparsity": ["solve", "-v", "1,2", "-d", "1", "-S", "1"],
        "base without sparsity": ["solve", "-v", "1,2", "-d", "1", "-K", "4", "--base", "uniform"],
        "unknown method": ["solve", "-v", "1,2", "-d", "1", "-K", "4", "-m", "nope"],
        "missing importance file": ["solve", "-v", str(tmp_path / "v.npy"), "-d", "1", "-K", "4"],
    }
    for name, argv in cases.items():
        line = _error(capsys, argv)
        assert len(line) < 400, name


def test_missing_key_lists_arrays(tmp_path, capsys):
    path = tmp_path / "w.npz"
    np.savez(path, W_enc=np.eye(2, 3), W_dec=np.eye(3, 2))
    line = _error(capsys, ["capacity", str(path), "--key", "W"])
    assert "W_enc (2, 3)" in line and "W_dec (3, 2)" in line


def test_unknown_method_lists_methods(capsys):
    line = _error(capsys, ["solve", "-v", "1,2", "-d", "1", "-K", "4", "-m", "nope"])
    assert "waterfill" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["solve", "-v", "1,2", "-d", "x", "-K", "4"],
        ["solve", "-v", "1,2", "-d", "1"],
        ["solve", "-v", "1,2", "-d", "1", "-K", "4", "-S", "0.5"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_bad_input_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [*_console_command(), "capacity", str(tmp_path / "nope.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("capalloc: error:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv("CAPALLOC_TRACEBACK", "1")
    with pytest.raises(ValueError):
        main(["solve", "-v", "1,x", "-d", "1", "-K", "4"])


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"capalloc {capalloc.__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "solve", "capacity", "bench"):
        assert command in out


# ----------------------------------------------------------------------------- bench, experiment


def test_bench_uses_bench_module(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("capalloc.experiments.bench")

    def run_solver_benchmark(quick, progress=False):
        calls.append((quick, progress))
        return [{"method": "waterfill", "n": 10}]

    fake.run_solver_benchmark = run_solver_benchmark
    fake.format_table = lambda rows: f"TABLE {rows[0]['method']} {len(rows)}"
    monkeypatch.setitem(sys.modules, "capalloc.experiments.bench", fake)
    assert main(["bench", "--quick"]) == 0
    assert capsys.readouterr().out.strip() == "TABLE waterfill 1"
    assert calls == [(True, True)]


def test_bench_missing_module_is_an_error(capsys, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "capalloc.experiments.bench", None
    )  # import raises ImportError
    line = _error(capsys, ["bench"])
    assert "bench" in line


def test_experiment_subcommand_registration(capsys, monkeypatch):
    def choices():
        return build_parser()._subparsers._group_actions[0].choices

    if not _has("capalloc.cli.experiment"):
        assert "experiment" not in choices()
    fake = types.ModuleType("capalloc.cli.experiment")

    def add_experiment_parser(subparsers):
        p = subparsers.add_parser("experiment", help="fake")
        p.add_argument("name")
        p.set_defaults(func=lambda args: print(f"ran {args.name}") or 0)

    fake.add_experiment_parser = add_experiment_parser
    monkeypatch.setitem(sys.modules, "capalloc.cli.experiment", fake)
    assert "experiment" in choices()
    assert main(["experiment", "toy"]) == 0
    assert capsys.readouterr().out.strip() == "ran toy"


# ----------------------------------------------------------------------------- damaged files


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity."""

    def refuse(name):
        raise ValueError(f"non-finite JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _bad_file(tmp_path, kind: str) -> str:
    from numpy.lib import format as npy_format

    if kind == "empty":
        path = tmp_path / "empty.npy"
        path.write_bytes(b"")
    elif kind == "truncated":
        path = tmp_path / "cut.npy"
        np.save(path, np.ones((4, 6)))
        path.write_bytes(path.read_bytes()[:-20])
    elif kind == "corrupt npz":
        path = tmp_path / "bad.npz"
        np.savez(path, W=np.ones((4, 6)))
        path.write_bytes(path.read_bytes()[:150])
    elif kind == "huge header":
        path = tmp_path / "huge.npy"
        with open(path, "wb") as fh:
            npy_format.write_array_header_1_0(
                fh, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
            )
            fh.write(b"\0" * 64)
    elif kind == "directory":
        path = tmp_path / "folder.npy"
        path.mkdir()
    else:
        path = tmp_path / "pipe.npy"
        os.mkfifo(path)
    return str(path)


BAD_FILES = {
    "empty": "empty file (0 bytes), not a .npy array",
    "truncated": "truncated or corrupt .npy: the header claims shape (4, 6) float64 "
    "(192 bytes of data) but only 172 bytes follow",
    "corrupt npz": "not a valid .npz archive",
    "huge header": "truncated or corrupt .npy: the header claims shape (1000000, 1000000) "
    "float64 (8000000000000 bytes of data) but only 64 bytes follow",
    "directory": "is a directory, not a file",
    "fifo": "is not a regular file (a FIFO, socket or device)",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("command", ["capacity", "solve"])
def test_damaged_or_odd_files_are_one_line_errors(tmp_path, capsys, kind, command):
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = _bad_file(tmp_path, kind)
    argv = (
        ["capacity", path]
        if command == "capacity"
        else ["solve", "--importance", path, "-d", "1", "-K", "4"]
    )
    line = _error(capsys, argv)
    assert line.startswith(f"capalloc: error: {path}: {BAD_FILES[kind]}"), line
    assert "no such file" not in line


# ----------------------------------------------------------------------------- absurd sizes


@pytest.fixture
def memory_16g(monkeypatch):
    """Pretend 16 GiB are available, so the refusals do not depend on this machine."""
    import capalloc.io

    monkeypatch.setattr(capalloc.io, "_available_memory", lambda: 16 * 2**30)


def test_d_with_400_digits(capsys):
    line = _error(capsys, ["solve", "-v", "1,2,3", "-d", "9" * 400, "-K", "3"])
    assert line.startswith("capalloc: error: -d/--d must be an integer in [0, 2**53], got 999")
    assert len(line) < 200


def test_too_many_features_are_refused_before_allocating(capsys, memory_16g, monkeypatch):
    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated")

    monkeypatch.setattr(np, "full", no_alloc)
    line = _error(capsys, ["solve", "--importance", "constant:1000000000", "-d", "3", "-K", "3"])
    assert line == (
        "capalloc: error: importance SPEC 'constant:1000000000': solving "
        "1000000000 features needs 93.1 GiB of memory; only 16 GiB available"
    )
    line = _error(capsys, ["solve", "-v", f"geometric:0.5:{'9' * 400}", "-d", "3", "-K", "3"])
    assert "needs about 10^401 bytes of memory; only 16 GiB available" in line
    assert len(line) < 400
    line = _error(capsys, ["solve", "-v", "1,2", "-d", "1", "-K", f"constant:{10**9}"])
    assert line.startswith("capalloc: error: kurtosis SPEC 'constant:1000000000': solving")


def test_too_many_features_from_a_file(tmp_path, capsys, monkeypatch):
    import capalloc.io

    path = tmp_path / "v.npy"
    np.save(path, np.ones(1000))
    monkeypatch.setattr(capalloc.io, "_available_memory", lambda: 50_000)
    line = _error(capsys, ["solve", "-v", str(path), "-d", "1", "-K", "3"])
    assert line == (
        "capalloc: error: importance: solving 1000 features needs 100000 bytes of "
        "memory; only 50000 bytes available"
    )


def test_negative_max_rows(tmp_path, capsys):
    line = _error(capsys, ["solve", "-v", "1,2", "-d", "1", "-K", "3", "--max-rows", "-5"])
    assert line == "capalloc: error: --max-rows must be >= 0 (0: all rows), got -5"
    path = tmp_path / "w.npy"
    np.save(path, np.eye(3))
    assert "--max-rows" in _error(capsys, ["capacity", str(path), "--max-rows", "-1"])


def test_phase_diagram_resolution_and_dpi(tmp_path, capsys, memory_16g):
    out = str(tmp_path / "pd.png")
    line = _error(capsys, ["experiment", "phase-diagram", "-o", out, "--resolution", "200000"])
    assert line == (
        "capalloc: error: --resolution 200000: solving 40000000000 grid cells needs "
        "14.6 TiB of memory; only 16 GiB available"
    )
    line = _error(capsys, ["experiment", "phase-diagram", "-o", out, "--resolution", "9" * 400])
    assert "needs about 10^802 bytes" in line and len(line) < 400
    line = _error(capsys, ["experiment", "phase-diagram", "-o", out, "--dpi", "9" * 400])
    assert line.startswith("capalloc: error: --dpi must be at most 2400, got 999")
    assert not os.path.exists(out)


def test_sparsity_sizes_are_checked_before_training(tmp_path, capsys, memory_16g):
    pytest.importorskip("torch")
    line = _error(
        capsys,
        [
            "experiment",
            "sparsity",
            "--n",
            "100000000",
            "--workers",
            "0",
            "--out-dir",
            str(tmp_path / "sweep"),
        ],
    )
    assert line == (
        "capalloc: error: training with --seeds 3 --n 100000000 --d 10 "
        "--batch-size 1024 needs 4.64 TiB of memory; only 16 GiB available"
    )
    assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------- sweeps via CLI


def _fake_sparsity_point(monkeypatch, fail_at=None):
    import capalloc.experiments.reproductions

    def point(model, sparsity, **kw):
        if sparsity == fail_at:
            raise RuntimeError("loss diverged")
        return {
            "model": model,
            "sparsity": sparsity,
            "kurtosis": 3 / (1 - sparsity),
            "polysemantic_fraction": float("nan"),
            "polysemantic_fraction_all": 0.5,
            "capacity_held_by_poly": float("inf"),
            "loss": 1.0,
            "block_shapes": {},
        }

    monkeypatch.setattr(capalloc.experiments.reproductions, "sparsity_point", point)


def _sparsity_argv(tmp_path):
    return [
        "experiment",
        "sparsity",
        "--sparsities",
        "0.5",
        "0.9",
        "--workers",
        "0",
        "--no-exact",
        "--no-progress",
        "--out-dir",
        str(tmp_path / "sweep"),
    ]


def test_failed_sweep_point_names_the_point_and_the_reason(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    _fake_sparsity_point(monkeypatch, fail_at=0.9)
    line = _error(capsys, _sparsity_argv(tmp_path))
    assert line.startswith(
        "capalloc: error: 1 sweep point(s) failed; first: {'model': 'quadratic', 'sparsity': 0.9, "
    )
    assert line.endswith("RuntimeError: loss diverged")


def test_sparsity_json_is_strict_json(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    _fake_sparsity_point(monkeypatch)
    capsys.readouterr()
    assert main([*_sparsity_argv(tmp_path), "--json"]) == 0
    rows = _strict_json(capsys.readouterr().out)
    assert [r["sparsity"] for r in rows] == [0.5, 0.9]
    assert rows[0]["polysemantic_fraction"] is None and rows[0]["capacity_held_by_poly"] is None


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # v**2 overflows: loss is inf
def test_solve_json_with_infinite_loss_is_strict_json(tmp_path, capsys):
    capsys.readouterr()
    assert (
        main(
            ["solve", "-v", "1e300,1e300", "-d", "1", "-K", "3", "--json", "--plot", str(tmp_path)]
        )
        == 0
    )
    data = _strict_json(capsys.readouterr().out)  # figure message went to stderr
    assert data["loss"] is None and data["capacity"] == [0.5, 0.5]


# ----------------------------------------------------------------------------- -o DIR

needs_mpl = pytest.mark.skipif(not _has("matplotlib"), reason="needs matplotlib")


@needs_mpl
def test_output_directory_gets_the_default_name(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "capalloc_demo.png").read_bytes()[:8] == PNG_MAGIC
    assert f"figure written to {tmp_path / 'capalloc_demo.png'}" in capsys.readouterr().out
    w = tmp_path / "w.npy"
    np.save(w, np.eye(3, 5))
    assert main(["capacity", str(w), "--hist", str(tmp_path), "--json"]) == 0
    _strict_json(capsys.readouterr().out)
    assert (tmp_path / "capacity_hist.png").read_bytes()[:8] == PNG_MAGIC


@needs_mpl
def test_phase_diagram_into_a_directory_with_json(tmp_path, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "experiment",
                "phase-diagram",
                "-o",
                str(tmp_path),
                "--resolution",
                "4",
                "--dpi",
                "30",
                "--json",
            ]
        )
        == 0
    )
    summary = _strict_json(capsys.readouterr().out)
    assert summary["output"] == str(tmp_path / "phase_diagram.png")
    assert summary["grid"] == [4, 4]
    assert (tmp_path / "phase_diagram.png").read_bytes()[:8] == PNG_MAGIC


@needs_mpl
def test_bad_output_paths_are_refused_before_computing(tmp_path, capsys):
    missing = tmp_path / "nodir" / "x.png"
    for argv, message in [
        (["demo", "-o", str(missing)], f"-o {missing}: directory {missing.parent} does not exist"),
        (
            ["demo", "-o", str(tmp_path / "nodir") + os.sep],
            f"-o {tmp_path / 'nodir'}{os.sep}: no such directory",
        ),
        (
            ["solve", "-v", "1,2", "-d", "1", "-K", "3", "--plot", str(tmp_path / "x.npy")],
            f"--plot {tmp_path / 'x.npy'}: unknown figure format .npy; use one of ",
        ),
        (["experiment", "phase-diagram", "-o", str(missing)], f"-o {missing}: directory"),
        (["demo", "-o", ""], "-o needs a file or directory name"),
    ]:
        capsys.readouterr()
        status = main(argv)
        captured = capsys.readouterr()
        assert status == 2
        assert captured.err.startswith(f"capalloc: error: {message}"), captured.err
        assert captured.out == ""  # refused before the banner or the solve
    assert list(tmp_path.iterdir()) == []
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.png"
        os.mkfifo(fifo)
        assert _error(capsys, ["demo", "-o", str(fifo)]).endswith("is not a regular file")


def test_lazy_subcommands_keep_their_help_and_stay_unimported():
    full = build_parser()._subparsers._group_actions[0]
    lazy = build_parser(["solve", "-v", "1,2", "-d", "1"])._subparsers._group_actions[0]
    helps = {a.dest: a.help for a in full._choices_actions}
    assert helps == {a.dest: a.help for a in lazy._choices_actions}
    assert set(full.choices) == set(lazy.choices)
    code = (
        "import sys; from capalloc.cli.main import main\n"
        "assert main(['solve', '-v', '3,2,1', '-d', '1', '-K', '10']) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('capalloc.cli.', 'capalloc.experiments'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.strip().splitlines()[-1]
    assert "capalloc.cli.experiment" not in loaded and "capalloc.experiments" not in loaded
    assert "capalloc.cli.capacity" not in loaded
