"""A small, resumable parameter-sweep engine.

:func:`run_sweep` evaluates ``fn(**point)`` for every point (a dict of
JSON-serialisable parameters) on any :class:`concurrent.futures.Executor` and
writes each result to its own file in ``out_dir`` as soon as it arrives. A file
is named by the point's :func:`point_key` (a hash of its sorted JSON), written
to a temporary name first and then moved into place with :func:`os.replace`,
so a sweep killed at any moment leaves only complete result files; running the
same sweep again loads those and computes only the missing points (and any
whose file is corrupt, with a :class:`CorruptResultWarning`).

The executor may be a local :class:`~concurrent.futures.ProcessPoolExecutor`
(the default), a :class:`~concurrent.futures.ThreadPoolExecutor`, or a Dask
cluster through ``dask.distributed.Client(...).get_executor()``: results come
back to the calling process, which alone writes files, so workers need no
shared file system.

Examples
--------
>>> import tempfile
>>> from concurrent.futures import ThreadPoolExecutor
>>> from capalloc.experiments.sweep import grid, run_sweep
>>> def square(x, offset):
...     return {"y": x * x + offset}
>>> points = grid(x=[1, 2, 3], offset=[0])
>>> with tempfile.TemporaryDirectory() as out, ThreadPoolExecutor(2) as pool:
...     [r["y"] for r in run_sweep(square, points, out, executor=pool, progress=False)]
[1, 4, 9]
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SweepError",
    "CorruptResultWarning",
    "grid",
    "point_key",
    "result_path",
    "load_results",
    "run_sweep",
]

_SUFFIX = ".json"


class SweepError(RuntimeError):
    """Some points of a sweep raised; the others were saved.

    The message names the first failed point and its exception.

    Attributes
    ----------
    failures : dict of str -> BaseException
        The exception of each failed point, by :func:`point_key`.
    points : dict of str -> dict
        The failed points themselves, by :func:`point_key`.
    """

    def __init__(
        self,
        failures: Mapping[str, BaseException],
        points: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.failures = dict(failures)
        self.points = {k: dict(p) for k, p in (points or {}).items() if k in self.failures}
        key, exc = next(iter(self.failures.items()))
        where = _short(self.points[key]) if key in self.points else f"key {key}"
        why = " ".join(str(exc).split()) or "(no message)"
        why = why if len(why) <= 300 else why[:297] + "..."
        super().__init__(
            f"{len(self.failures)} sweep point(s) failed; first: {where}: "
            f"{type(exc).__name__}: {why}"
        )


def _short(point: Any, limit: int = 200) -> str:
    text = repr(dict(point) if isinstance(point, Mapping) else point)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _canonical(point: Mapping[str, Any]) -> str:
    if not isinstance(point, Mapping):
        raise TypeError(f"each point must be a dict of parameters, got {point!r}")
    try:
        return json.dumps(point, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"point must be JSON-serialisable (finite numbers), got {point!r}"
        ) from exc


def point_key(point: Mapping[str, Any]) -> str:
    """Stable 20-hex-digit key of a point: a SHA-256 of its sorted, compact JSON.

    Key order does not matter; ``1`` and ``1.0`` are different points.

    Examples
    --------
    >>> from capalloc.experiments.sweep import point_key
    >>> point_key({"a": 1, "b": "x"}) == point_key({"b": "x", "a": 1})
    True
    >>> len(point_key({"a": 1}))
    20
    """
    return hashlib.sha256(_canonical(point).encode()).hexdigest()[:20]


def result_path(out_dir: str | os.PathLike[str], point: Mapping[str, Any]) -> Path:
    """Path of the result file of ``point`` in ``out_dir``."""
    return Path(out_dir) / f"{point_key(point)}{_SUFFIX}"


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    """Cartesian product of parameter axes, as a list of points.

    The last axis varies fastest.

    Parameters
    ----------
    **axes : iterable
        Values of each parameter.

    Returns
    -------
    points : list of dict

    Examples
    --------
    >>> from capalloc.experiments.sweep import grid
    >>> grid(model=["relu", "gelu"], sparsity=[0.5, 0.9])  # doctest: +NORMALIZE_WHITESPACE
    [{'model': 'relu', 'sparsity': 0.5}, {'model': 'relu', 'sparsity': 0.9},
     {'model': 'gelu', 'sparsity': 0.5}, {'model': 'gelu', 'sparsity': 0.9}]
    """
    names = list(axes)
    values = []
    for name in names:
        vals = axes[name]
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
            raise ValueError(f"axis {name!r} must be an iterable of values, got {vals!r}")
        values.append(list(vals))
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


class CorruptResultWarning(UserWarning):
    """A result file of a sweep could not be used; its point is computed again."""


def _read(path: Path, point: Mapping[str, Any]) -> tuple[bool, Any]:
    """``(True, result)`` from the result file of ``point``, ``(False, None)`` without one.

    A file that is not valid JSON, lacks ``point`` or ``result``, or stores a
    different point than its name promises is reported by a
    :class:`CorruptResultWarning` and treated as missing.
    """
    if not path.exists():
        return False, None
    try:
        if not path.is_file():  # never open a FIFO: it would block
            raise ValueError("not a regular file")
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
        if not isinstance(saved, dict) or not {"point", "result"} <= saved.keys():
            raise ValueError("not an object with 'point' and 'result'")
        if not isinstance(saved["point"], Mapping) or _canonical(saved["point"]) != _canonical(
            point
        ):
            raise ValueError(f"it holds point {_short(saved['point'])}, not {_short(point)}")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        warnings.warn(
            f"sweep result file {path} is unusable ({exc}); recomputing its point",
            CorruptResultWarning,
            stacklevel=3,
        )
        return False, None
    return True, saved["result"]


def load_results(points: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str]) -> list[Any]:
    """Saved results of ``points`` (``None`` where a point has no usable result file yet)."""
    return [_read(result_path(out_dir, point), point)[1] for point in points]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _call(fn: Callable[..., Any], point: Mapping[str, Any]) -> Any:
    return fn(**point)


def run_sweep(
    fn: Callable[..., Mapping[str, Any]],
    points: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    executor: cf.Executor | None = None,
    progress: bool = True,
    on_error: str = "raise",
    max_workers: int | None = None,
) -> list[Any]:
    """Evaluate ``fn(**point)`` for every point, saving each result as it finishes.

    Parameters
    ----------
    fn : callable
        ``fn(**point) -> dict``, JSON-serialisable (a result that is not
        counts as a failure of its point). With a process or Dask
        executor it must be picklable (defined at module level).
    points : sequence of dict
        Parameters of each evaluation, JSON-serialisable. Equal points are
        computed once.
    out_dir : path
        Directory of the result files (created if needed); one
        ``<point_key>.json`` per point holding ``{"point": ..., "result": ...}``.
    executor : concurrent.futures.Executor, optional
        Where to run the points: anything with ``submit`` returning
        :class:`concurrent.futures.Future` (e.g. ``dask.distributed.Client.get_executor()``).
        Default: a :class:`~concurrent.futures.ProcessPoolExecutor` with
        ``max_workers`` processes (``os.cpu_count()``) started with ``spawn``,
        created and shut down here. A given executor is left running.
    progress : bool, default True
        Show a tqdm progress bar (points already on disk count as done).
    on_error : {"raise", "skip"}, default "raise"
        When ``fn`` raises for some points, the others still run and are saved;
        then ``"raise"`` raises :class:`SweepError`, ``"skip"`` returns ``None``
        for the failed points. Failed points have no file, so a rerun retries them.
    max_workers : int, optional
        Size of the default process pool.

    Returns
    -------
    results : list
        ``fn``'s result for each point, in the order of ``points``.

    Notes
    -----
    Only the calling process writes files, each atomically (temporary file,
    ``fsync``, :func:`os.replace`): after a kill at any moment every
    ``<key>.json`` is complete, and rerunning computes only the points without
    one. Stale ``.tmp-*`` files from a kill are ignored. A result file that is
    not valid JSON or stores another point than its key (a hand edit, a copy from
    another sweep) is named in a :class:`CorruptResultWarning`, recomputed and
    overwritten.

    Examples
    --------
    >>> import tempfile
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> from capalloc.experiments.sweep import run_sweep
    >>> def add(a, b):
    ...     return {"sum": a + b}
    >>> with tempfile.TemporaryDirectory() as out, ThreadPoolExecutor(1) as pool:
    ...     run_sweep(add, [{"a": 1, "b": 2}], out, executor=pool, progress=False)
    [{'sum': 3}]
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if executor is not None and not hasattr(executor, "submit"):
        raise TypeError(f"executor must have a submit method, got {executor!r}")
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
    points = list(points)
    keys = [point_key(p) for p in points]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {os.fspath(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {}
    todo: dict[str, Mapping[str, Any]] = {}
    for key, point in zip(keys, points, strict=True):
        path = out / f"{key}{_SUFFIX}"
        if key in results or key in todo:
            continue
        found, value = _read(path, point)
        if found:
            results[key] = value
        else:
            todo[key] = point

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(results) + len(todo), initial=len(results), desc="sweep", unit="pt")
    failures: dict[str, BaseException] = {}
    own = None
    try:
        if todo:
            if executor is None:
                import multiprocessing

                own = cf.ProcessPoolExecutor(
                    max_workers=max_workers or os.cpu_count(),
                    mp_context=multiprocessing.get_context("spawn"),
                )
                executor = own
            futures = {executor.submit(_call, fn, point): key for key, point in todo.items()}
            for fut in cf.as_completed(futures):
                key = futures[fut]
                try:
                    value = fut.result()
                    text = json.dumps({"point": todo[key], "result": value})
                except Exception as exc:  # noqa: BLE001 - reported via SweepError
                    failures[key] = exc
                else:
                    _write_atomic(out / f"{key}{_SUFFIX}", text)
                    results[key] = value
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
    if failures and on_error == "raise":
        raise SweepError(failures, todo)
    return [results.get(key) for key in keys]
