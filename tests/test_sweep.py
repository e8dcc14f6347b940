"""Tests of capalloc.experiments.sweep: keys, grids, atomic result files, resume after a kill, Dask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capalloc.experiments.sweep import (
    CorruptResultWarning,
    SweepError,
    grid,
    load_results,
    point_key,
    result_path,
    run_sweep,
)

# A point function that leaves one marker file per call, so tests can count calls.
HELPER = textwrap.dedent("""
    import os
    import time
    import uuid


    def work(x, marks, delay=0.0, fail=()):
        os.makedirs(marks, exist_ok=True)
        name = f"{x}-{os.getpid()}-{uuid.uuid4().hex}"
        with open(os.path.join(marks, name), "w") as fh:
            fh.write(str(x))
        if x in fail:
            raise RuntimeError(f"point {x} failed")
        time.sleep(delay)
        return {"x": x, "square": x * x, "payload": "y" * 2000}
""")


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """The helper module, importable (and picklable) under the name ``sweep_helper``."""
    mod_dir = tmp_path / "mod"
    mod_dir.mkdir()
    (mod_dir / "sweep_helper.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(mod_dir))
    import importlib

    sys.modules.pop("sweep_helper", None)
    module = importlib.import_module("sweep_helper")
    yield module
    sys.modules.pop("sweep_helper", None)


def _calls(marks: Path) -> list[int]:
    return sorted(int(p.name.split("-")[0]) for p in marks.iterdir()) if marks.exists() else []


def _result_files(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.json") if not p.name.startswith("."))


# ----------------------------------------------------------------------------- keys and grids


def test_point_key_is_stable_and_order_free():
    a = {"model": "relu", "sparsity": 0.9, "seeds": 3}
    b = dict(reversed(list(a.items())))
    assert point_key(a) == point_key(b)
    assert point_key(a) != point_key({**a, "sparsity": 0.91})
    assert point_key({"x": 1}) != point_key({"x": 1.0})
    # stable across processes and releases: resume directories depend on it
    assert point_key({"x": 1}) == "5041bf1f713df2047843"
    assert len(point_key(a)) == 20 and int(point_key(a), 16) >= 0


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, [1, 2]])
def test_point_key_rejects_non_json_points(bad):
    with pytest.raises((ValueError, TypeError), match="point"):
        point_key(bad)


def test_grid_is_the_cartesian_product_last_axis_fastest():
    pts = grid(a=[1, 2], b=["x", "y"], c=[True])
    assert pts == [
        {"a": 1, "b": "x", "c": True},
        {"a": 1, "b": "y", "c": True},
        {"a": 2, "b": "x", "c": True},
        {"a": 2, "b": "y", "c": True},
    ]
    assert grid() == [{}]
    assert grid(a=[]) == []
    with pytest.raises(ValueError, match="axis 'a'"):
        grid(a="abc")
    with pytest.raises(ValueError, match="axis 'a'"):
        grid(a=3)


# ----------------------------------------------------------------------------- running


def test_results_in_point_order_and_one_file_each(tmp_path, helper):
    marks, out = tmp_path / "marks", tmp_path / "out"
    points = [{"x": x, "marks": str(marks)} for x in (3, 1, 2)]
    with ThreadPoolExecutor(2) as pool:
        res = run_sweep(helper.work, points, out, executor=pool, progress=False)
    assert [r["square"] for r in res] == [9, 1, 4]
    files = _result_files(out)
    assert len(files) == 3
    for p in points:
        saved = json.loads(result_path(out, p).read_text())
        assert saved["point"] == p and saved["result"]["x"] == p["x"]
    assert load_results(points, out) == res
    assert load_results([{"x": 99, "marks": str(marks)}], out) == [None]
    assert not list(out.glob(".tmp-*"))


def test_rerun_skips_finished_points_and_duplicates_run_once(tmp_path, helper):
    marks, out = tmp_path / "marks", tmp_path / "out"
    points = [{"x": x, "marks": str(marks)} for x in range(4)]
    with ThreadPoolExecutor(2) as pool:
        run_sweep(helper.work, points[:2], out, executor=pool, progress=False)
        assert _calls(marks) == [0, 1]
        res = run_sweep(helper.work, points + [points[3]], out, executor=pool, progress=False)
    assert _calls(marks) == [0, 1, 2, 3]  # 0 and 1 loaded, 3 computed once
    assert [r["x"] for r in res] == [0, 1, 2, 3, 3]


def test_failures_are_reported_and_retried_on_rerun(tmp_path, helper):
    marks, out = tmp_path / "marks", tmp_path / "out"
    points = [{"x": x, "marks": str(marks), "fail": [1, 3]} for x in range(5)]
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(SweepError, match="2 sweep point") as info:
            run_sweep(helper.work, points, out, executor=pool, progress=False)
        assert set(info.value.failures) == {point_key(points[1]), point_key(points[3])}
        assert len(_result_files(out)) == 3  # the good points were saved
        skipped = run_sweep(
            helper.work, points, out, executor=pool, progress=False, on_error="skip"
        )
        assert [r is None for r in skipped] == [False, True, False, True, False]
        assert _calls(marks) == [0, 1, 1, 2, 3, 3, 4]  # only the failed points ran again
    # "fix" fn: a wrapper that no longer fails, rerun computes just the two missing points
    with ThreadPoolExecutor(2) as pool:
        fixed = run_sweep(
            lambda fail, **kw: helper.work(**kw), points, out, executor=pool, progress=False
        )
    assert [r["x"] for r in fixed] == [0, 1, 2, 3, 4]
    assert _calls(marks) == [0, 1, 1, 1, 2, 3, 3, 3, 4]


def test_sweep_error_names_the_failed_point_and_why(tmp_path, helper):
    marks = tmp_path / "marks"
    points = [{"x": x, "marks": str(marks), "fail": [2]} for x in range(3)]
    with ThreadPoolExecutor(1) as pool, pytest.raises(SweepError) as info:
        run_sweep(helper.work, points, tmp_path / "out", executor=pool, progress=False)
    text = str(info.value)
    assert text.startswith("1 sweep point(s) failed; first: {'x': 2, ")
    assert text.endswith("RuntimeError: point 2 failed")
    assert info.value.points == {point_key(points[2]): points[2]}
    assert isinstance(info.value.failures[point_key(points[2])], RuntimeError)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("", "Expecting value"),
        ('{"point": {"x": 1', "Expecting"),
        ("[1, 2]", "not an object with 'point' and 'result'"),
        ('{"result": {"x": 1}}', "not an object with 'point' and 'result'"),
        ('{"point": {"x": 7, "marks": "elsewhere"}, "result": {"x": 7}}', "it holds point {'x': 7"),
        ('{"point": 3, "result": {"x": 7}}', "it holds point"),
        (b"\xff\xfe\x00garbage", "codec"),
    ],
)
def test_corrupt_or_mismatched_result_file_is_named_and_recomputed(
    tmp_path, helper, content, reason
):
    marks, out = tmp_path / "marks", tmp_path / "out"
    points = [{"x": x, "marks": str(marks)} for x in range(3)]
    with ThreadPoolExecutor(2) as pool:
        run_sweep(helper.work, points, out, executor=pool, progress=False)
        bad = result_path(out, points[1])
        if isinstance(content, bytes):
            bad.write_bytes(content)
        else:
            bad.write_text(content)
        with pytest.warns(CorruptResultWarning, match=reason) as record:
            assert load_results(points, out)[1] is None
        assert str(bad) in str(record[0].message)
        with pytest.warns(CorruptResultWarning, match="recomputing") as record:
            res = run_sweep(helper.work, points, out, executor=pool, progress=False)
    assert str(bad) in str(record[0].message)
    assert [r["x"] for r in res] == [0, 1, 2]
    assert _calls(marks) == [0, 1, 1, 2]  # only the corrupt point ran again
    saved = json.loads(bad.read_text())  # ... and its file was rewritten
    assert saved["point"] == points[1] and saved["result"]["square"] == 1


def test_matching_point_with_other_number_types_is_not_corrupt(tmp_path):
    point = {"x": 2.0, "tags": ("a", "b")}  # a tuple is stored as a JSON list
    with ThreadPoolExecutor(1) as pool:
        run_sweep(lambda x, tags: {"y": x}, [point], tmp_path, executor=pool, progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_results([point], tmp_path) == [{"y": 2.0}]


def test_result_path_that_is_not_a_file_is_not_opened(tmp_path):
    point = {"x": 1}
    result_path(tmp_path, point).mkdir()  # a FIFO here would block a plain open()
    with pytest.warns(CorruptResultWarning, match="not a regular file"):
        assert load_results([point], tmp_path) == [None]


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        run_sweep(dict, [{"a": 1}], target, progress=False)


def test_non_json_result_is_a_failure_not_a_crash(tmp_path):
    def bad(x):
        return {"x": object()} if x == 1 else {"x": x}

    with ThreadPoolExecutor(1) as pool:
        res = run_sweep(
            bad, grid(x=[0, 1, 2]), tmp_path, executor=pool, progress=False, on_error="skip"
        )
    assert res == [{"x": 0}, None, {"x": 2}]
    assert len(_result_files(tmp_path)) == 2


def test_write_is_atomic_when_the_rename_fails(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with ThreadPoolExecutor(1) as pool, pytest.raises(OSError, match="disk full"):
        run_sweep(lambda x: {"x": x}, [{"x": 1}], tmp_path, executor=pool, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a result nor a stray temporary file


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="fn must be callable"):
        run_sweep(3, [], tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        run_sweep(dict, [], tmp_path, on_error="ignore")
    with pytest.raises(TypeError, match="executor"):
        run_sweep(dict, [], tmp_path, executor=object())
    with pytest.raises(ValueError, match="max_workers"):
        run_sweep(dict, [], tmp_path, max_workers=0)
    assert run_sweep(dict, [], tmp_path / "new", progress=False) == []
    assert (tmp_path / "new").is_dir()


def test_default_process_pool(tmp_path, helper):
    marks = tmp_path / "marks"
    points = [{"x": x, "marks": str(marks)} for x in range(3)]
    res = run_sweep(helper.work, points, tmp_path / "out", progress=False, max_workers=2)
    assert [r["square"] for r in res] == [0, 1, 4]
    pids = {p.name.split("-")[1] for p in marks.iterdir()}
    assert str(os.getpid()) not in pids  # computed in worker processes


# ----------------------------------------------------------------------------- kill and resume

KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {mod_dir!r})
    from capalloc.experiments.sweep import run_sweep
    from sweep_helper import work

    if __name__ == "__main__":
        points = [{{"x": x, "marks": {marks!r}, "delay": 0.4}} for x in range({count})]
        run_sweep(work, points, {out!r}, progress=False, max_workers=2)
        print("finished")
""")


def test_resume_after_sigkill_computes_only_missing_points(tmp_path, helper):
    count = 14
    marks, out = tmp_path / "marks", tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(
        KILL_SCRIPT.format(
            mod_dir=str(tmp_path / "mod"), marks=str(marks), out=str(out), count=count
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(_result_files(out)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the script and its pool workers
        proc.wait(timeout=30)
    time.sleep(0.5)  # let the killed workers' files settle
    done = _result_files(out)
    assert 3 <= len(done) < count
    for path in done:  # every result file is complete JSON
        saved = json.loads(path.read_text())
        assert saved["result"]["square"] == saved["point"]["x"] ** 2
        assert path.name == f"{point_key(saved['point'])}.json"
    done_x = {json.loads(p.read_text())["point"]["x"] for p in done}
    before = set(marks.iterdir())

    points = [{"x": x, "marks": str(marks), "delay": 0.4} for x in range(count)]  # as the script
    with ThreadPoolExecutor(4) as pool:
        res = run_sweep(helper.work, points, out, executor=pool, progress=False)
    assert [r["x"] for r in res] == list(range(count))
    new_calls = sorted(int(p.name.split("-")[0]) for p in set(marks.iterdir()) - before)
    assert new_calls == sorted(set(range(count)) - done_x)  # each missing point exactly once
    assert len(_result_files(out)) == count


# ----------------------------------------------------------------------------- dask


def test_dask_client_executor(tmp_path, helper):
    distributed = pytest.importorskip("distributed")
    marks, out = tmp_path / "marks", tmp_path / "out"
    points = [{"x": x, "marks": str(marks)} for x in range(5)]
    start = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        executor = client.get_executor()
        res = run_sweep(helper.work, points[:3], out, executor=executor, progress=False)
        assert [r["square"] for r in res] == [0, 1, 4]
        res = run_sweep(helper.work, points, out, executor=executor, progress=False)
    assert [r["square"] for r in res] == [0, 1, 4, 9, 16]
    assert _calls(marks) == [0, 1, 2, 3, 4]
    assert time.perf_counter() - start < 60
