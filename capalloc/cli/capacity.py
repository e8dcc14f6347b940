"""The ``capalloc capacity`` subcommand (registered by :mod:`capalloc.cli.main`).

``capalloc capacity FILE``
    Capacity report of a weight matrix: capacities next to leverage scores, the
    rank, the effective rank and the share of the top singular direction; tables
    of the most and least distinct features, a per-feature export, blocks and a
    histogram. ``FILE`` is a ``.npy``, ``.npz``, torch checkpoint, ``.safetensors``,
    ``.txt``/``.csv`` file or a SAELens directory; ``.npy`` and ``.safetensors``
    are memory-mapped and read a block of features at a time.

The computation is :func:`capalloc.capacity_report`; this module only parses
options and prints. Bad input ends as one line ``capalloc: error: ...`` and exit
status 2 (see :func:`capalloc.cli.main.main`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import numpy as np

from capalloc.cli._output import CliError, counts_text, figure_path, save_figure, table, write_json

__all__ = ["add_capacity_parser"]

_FLOAT32_WORK = 1e10  # reports costing more multiply-adds use float32 by default
_LEVERAGE_MAX_D = 2048  # leverage needs an eigendecomposition of the d x d Gram: O(d^3)
_PROGRESS_WORK = 2e9  # progress bars (on a terminal) for reports costing more multiply-adds
_EXPORT_CHUNK = 1 << 16  # rows of the --out CSV written at a time


# ----------------------------------------------------------------------------- options


def _non_negative(what: str, value: int) -> int:
    if value < 0:
        raise CliError(f"{what} must be >= 0, got {value}")
    return value


def _export_path(path: str) -> str:
    """``--out``: a ``.npy`` or ``.csv`` file in an existing directory (checked up front)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npy", ".csv"):
        raise CliError(
            f"--out {path}: use a .npy or .csv file name, got suffix {suffix or '(none)'}"
        )
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise CliError(f"--out {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise CliError(f"--out {path}: is a directory")
    return path


def _check_tol(tol: float | None) -> None:
    if tol is not None and not (math.isfinite(tol) and 0 < tol < 1):
        raise CliError(f"--tol must lie in (0, 1), got {tol!r}")


def _features_axis(args: argparse.Namespace, stored: Any) -> tuple[int, str]:
    """The axis of ``stored`` that indexes features, and why."""
    if args.features_axis is not None:
        return args.features_axis, "given"
    if stored.features_axis is not None:
        return stored.features_axis, "SAELens W_dec"
    rows, cols = stored.shape
    return (0, "the longer axis") if rows > cols else (1, "the longer axis")


# ----------------------------------------------------------------------------- output


def _plural(k: int, word: str) -> str:
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


def _blocks_report(blocks: list[Any], max_rows: int) -> tuple[str, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    for b in blocks:
        features = [int(i) for i in b.features]
        records.append(
            {
                "features": features,
                "size": len(features),
                "dim": int(b.dim),
                "scale": float(b.scale),
                "capacity_sum": float(b.capacity_sum),
                "residual": float(b.residual),
            }
        )
    shapes: dict[tuple[int, int], int] = {}
    for r in records:
        shapes[(r["dim"], r["size"])] = shapes.get((r["dim"], r["size"]), 0) + 1
    kinds = ", ".join(
        f"{count} × [{_plural(size, 'feature')} in {_plural(dim, 'dimension')}]"
        for (dim, size), count in sorted(shapes.items())
    )
    rows = []
    for k, r in enumerate(sorted(records, key=lambda r: (-r["size"], r["features"]))):
        feats = r["features"]
        shown = ",".join(map(str, feats[:8])) + (",..." if len(feats) > 8 else "")
        rows.append(
            [
                str(k),
                str(r["dim"]),
                str(r["size"]),
                f"{r['capacity_sum']:.4f}",
                f"{r['scale']:.4g}",
                f"{r['residual']:.2e}",
                shown,
            ]
        )
    text = f"blocks: {len(records)} ({kinds or 'none'})"
    if rows:
        text += "\n" + table(
            ["block", "dim", "size", "ΣC", "scale", "residual", "features"], rows, max_rows
        )
    return text, records


def _feature_table(report: Any, order: np.ndarray, title: str) -> str:
    lev = report.leverage
    rows = [
        [
            str(int(i)),
            f"{report.capacity[i]:.6f}",
            "-" if lev is None else f"{lev[i]:.6f}",
            f"{math.sqrt(report.norms[i]):.6g}",
            str(report.labels[i]),
        ]
        for i in order
    ]
    return f"{title}\n" + table(["feature", "capacity", "leverage", "|W_i|", "label"], rows, 0)


def _stats(C: np.ndarray) -> dict[str, float]:
    return {
        name: (float(f(C)) if C.size else float("nan"))
        for name, f in (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))
    }


def _export(path: str, report: Any) -> None:
    """Per-feature table: ``.npy`` (structured array) or ``.csv``, written in chunks."""
    n = report.n
    lev = report.leverage if report.leverage is not None else np.full(n, np.nan)
    if path.lower().endswith(".npy"):
        out = np.empty(
            n,
            dtype=[
                ("feature", "<i8"),
                ("capacity", "<f8"),
                ("leverage", "<f8"),
                ("norm", "<f8"),
                ("label", "<U12"),
            ],
        )
        out["feature"] = np.arange(n)
        out["capacity"], out["leverage"] = report.capacity, lev
        out["norm"], out["label"] = np.sqrt(report.norms), report.labels
        np.save(path, out, allow_pickle=False)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write("feature,capacity,leverage,norm,label\n")
        for lo in range(0, n, _EXPORT_CHUNK):
            hi = min(n, lo + _EXPORT_CHUNK)
            norms = np.sqrt(report.norms[lo:hi])
            f.writelines(
                f"{i},{c!r},{e!r},{m!r},{lab}\n"
                for i, c, e, m, lab in zip(
                    range(lo, hi),
                    report.capacity[lo:hi].tolist(),
                    lev[lo:hi].tolist(),
                    norms.tolist(),
                    report.labels[lo:hi].tolist(),
                    strict=True,
                )
            )


def _histogram(ax: Any, report: Any, scale: str, bins: int | None) -> None:
    """Capacities stacked by label, on [0, 1], their own range (auto) or a log axis."""
    from capalloc import LABELS
    from capalloc.plots import LABEL_COLORS

    C = np.asarray(report.capacity)
    k = bins or int(min(100, max(10, round(math.sqrt(max(C.size, 1))))))
    positive = C[C > 0]
    note = ""
    if scale == "log" and positive.size:
        lo = float(positive.min())
        hi = max(float(positive.max()), lo * 1.0001)
        edges = np.geomspace(lo, hi, k + 1)
        ax.set_xscale("log")
        zero = C.size - positive.size
        note = f" ({zero} at C = 0 not shown)" if zero else ""
    elif scale == "auto" and C.size:
        lo, hi = float(C.min()), float(C.max())
        pad = max((hi - lo) * 0.02, 1e-3)
        edges = np.linspace(max(0.0, lo - pad), min(1.0, hi + pad), k + 1)
    else:
        edges = np.linspace(0.0, 1.0, k + 1)
    shown = (C > 0) if ax.get_xscale() == "log" else np.ones(C.shape, dtype=bool)
    parts = [np.clip(C[(report.labels == lab) & shown], edges[0], edges[-1]) for lab in LABELS]
    present = [i for i, p in enumerate(parts) if p.size]
    if present:
        ax.hist(
            [parts[i] for i in present],
            bins=edges,
            stacked=True,
            color=[LABEL_COLORS[LABELS[i]] for i in present],
            label=[LABELS[i] for i in present],
            edgecolor="white",
            linewidth=0.3,
        )
        ax.legend(frameon=False, fontsize="small")
    ax.set_xlabel("capacity $C_i$")
    ax.set_ylabel("features")
    mean = C.mean() if C.size else float("nan")
    ax.set_title(
        rf"$n = {C.size}$, $\Sigma_i\, C_i = {C.sum():.4g}$, mean {mean:.3g}{note}",
        fontsize="medium",
    )


# ----------------------------------------------------------------------------- command


def _cmd_capacity(args: argparse.Namespace) -> int:
    from capalloc import capacity_report
    from capalloc.io import open_matrix

    _non_negative("--max-rows", args.max_rows)
    top = _non_negative("--top", args.top or 0)
    bottom = _non_negative("--bottom", args.bottom or 0)
    if args.bins is not None and args.bins < 1:
        raise CliError(f"--bins must be a positive integer, got {args.bins}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be a positive integer, got {args.threads}")
    _check_tol(args.tol)
    out = _export_path(args.out) if args.out else None
    hist = figure_path(args.hist, "capacity_hist.png", "--hist") if args.hist else None
    stored = open_matrix(args.file, args.key)
    axis, axis_reason = _features_axis(args, stored)
    rows_, cols_ = stored.shape
    d, n = (cols_, rows_) if axis == 0 else (rows_, cols_)
    work = float(n) * d * min(n, d)
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "float32" if work > _FLOAT32_WORK else "float64"
    want_leverage = args.rank or min(d, n) <= _LEVERAGE_MAX_D
    progress = args.progress or (work > _PROGRESS_WORK and sys.stderr.isatty())
    t0 = time.perf_counter()
    report = capacity_report(
        stored.array,
        features_axis=axis,
        center=args.center,
        atol=args.atol,
        dtype=np.dtype(dtype_name),
        progress=progress,
        leverage=want_leverage,
        threads=args.threads,
    )
    seconds = time.perf_counter() - t0
    blocks_text, blocks = (None, None)
    if args.blocks:
        from capalloc.geometry import find_blocks

        A = np.asarray(stored.array if axis == 1 else stored.array[:].T, dtype=np.float64)
        if args.center:
            A = A - A.mean(axis=1, keepdims=True)
        found = find_blocks(A, *(() if args.tol is None else (args.tol,)), progress=progress)
        blocks_text, blocks = _blocks_report(found, args.max_rows)
    C = report.capacity
    if out:
        _export(out, report)
    if args.json:
        write_json(
            {
                "file": os.fspath(args.file),
                "key": stored.key,
                "shape": list(stored.shape),
                "stored_dtype": stored.stored_dtype,
                "features_axis": axis,
                "d": d,
                "n": n,
                "centered": report.centered,
                "sum_capacity": report.sum_capacity,
                "sum_leverage": None if report.leverage is None else report.sum_leverage,
                "gap": None if report.leverage is None else report.gap,
                "rank": report.rank,
                "rank_bound": min(d, n),
                "effective_rank": report.effective_rank,
                "top_share": report.top_share,
                **_stats(C),
                "counts": report.counts,
                "atol": args.atol,
                "arithmetic": dtype_name,
                "seconds": seconds,
                "capacity": np.asarray(C),
                "leverage": None if report.leverage is None else np.asarray(report.leverage),
                "norms": np.asarray(report.norms),
                "blocks": blocks,
            }
        )
    else:
        _print_report(args, stored, axis, axis_reason, report, dtype_name, seconds)
        if top:
            order = np.argsort(-C, kind="stable")[:top]
            print(_feature_table(report, order, f"top {len(order)} features by capacity:"))
        if bottom:
            order = np.argsort(C, kind="stable")[:bottom]
            print(_feature_table(report, order, f"bottom {len(order)} features by capacity:"))
        if blocks_text:
            print(blocks_text)
        if out:
            print(f"per-feature table written to {out}")
    if hist:
        save_figure(
            hist,
            lambda axes: _histogram(axes[0], report, args.hist_range, args.bins),
            1,
            (6.0, 4.0),
            quiet=args.json,
        )
    return 0


def _print_report(
    args: argparse.Namespace,
    stored: Any,
    axis: int,
    axis_reason: str,
    report: Any,
    dtype_name: str,
    seconds: float,
) -> None:
    d, n = report.d, report.n
    bound = min(d, n)
    total = report.sum_capacity
    print(f"capacity report: {stored.where}")
    if stored.config:
        cfg = stored.config
        known = [f"{k} {cfg[k]}" for k in ("d_in", "d_sae", "architecture") if k in cfg]
        print(f"  SAELens directory ({', '.join(known) or 'cfg.json'})")
    print(
        f"  stored shape {stored.shape} {stored.stored_dtype}; features along axis {axis} "
        f"({axis_reason}) -> d = {d} dimensions, n = {n} features"
        + ("; mean feature removed (--center)" if report.centered else "")
    )
    rank_text = f"rank W = {report.rank} <= " if report.rank is not None else "rank W <= "
    print(
        f"  ΣC = {total:.6g} <= {rank_text}min(d, n) = {bound}   (ΣC/d = "
        f"{total / d if d else float('nan'):.4f})"
    )
    if report.leverage is not None:
        print(
            f"  Σ leverage = {report.sum_leverage:.6g}; gap Σ(ℓ - C) = {report.gap:.6g} "
            "(shared directions that capacity counts against every feature)"
        )
    else:
        print(f"  (leverage and rank skipped for min(d, n) > {_LEVERAGE_MAX_D}: pass --rank)")
    print(
        f"  effective rank {report.effective_rank:.4g}; the top singular direction holds "
        f"{100 * report.top_share:.3g}% of |W|²"
        + (
            "  (a shared direction: try --center)"
            if report.top_share > 0.25 and not report.centered and bound > 4
            else ""
        )
    )
    stats = _stats(report.capacity)
    print("  capacity  " + "  ".join(f"{k} {v:.4f}" for k, v in stats.items()))
    print(f"  labels (atol {args.atol:g}): {counts_text(report.counts)}")
    print(f"  arithmetic {dtype_name}, {seconds:.2f} s")


# ----------------------------------------------------------------------------- parser


def add_capacity_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``capacity`` subcommand to the subparsers ``sub`` of the main parser."""
    cap = sub.add_parser(
        "capacity",
        help="capacity report of a weight matrix",
        description="Capacities C_i = (W_i.W_i)^2 / sum_j (W_i.W_j)^2 of the features of a "
        "weight matrix in .npy, .npz, torch (.pt/.pth/.pth.tar/.ckpt/.bin), .safetensors, "
        ".txt or .csv, or a SAELens directory (cfg.json + sae_weights.safetensors: W_dec), "
        "next to their leverage scores (sum = rank). Cost O(n d^2); .npy and .safetensors "
        "are memory-mapped and read in blocks.",
    )
    cap.add_argument("file", help="weight file or SAELens directory")
    cap.add_argument(
        "--key",
        help="array name inside .npz, torch checkpoint or .safetensors, or a dotted suffix "
        "of one (atom_embedding.embedding.weight)",
    )
    cap.add_argument(
        "--features-axis",
        type=int,
        choices=(0, 1),
        default=None,
        help="axis that indexes features: 1 = columns (W is d x n), 0 = rows "
        "(an SAE decoder or nn.Linear/nn.Embedding weight stored n x d); default: 0 for a "
        "SAELens W_dec, else the longer axis",
    )
    cap.add_argument(
        "--center", action="store_true", help="subtract the mean feature first (shared direction)"
    )
    cap.add_argument(
        "--dtype",
        choices=("auto", "float32", "float64"),
        default="auto",
        help="arithmetic (auto: float32 when n*d*min(n, d) > 1e10, else float64)",
    )
    cap.add_argument(
        "--atol",
        type=float,
        default=1e-6,
        help="C >= 1 - atol is monosemantic, C <= atol ignored (default 1e-6)",
    )
    cap.add_argument(
        "--rank",
        action="store_true",
        help=f"compute leverage and rank even when min(d, n) > {_LEVERAGE_MAX_D} (O(d^3))",
    )
    cap.add_argument("--top", type=int, metavar="K", help="table of the K highest capacities")
    cap.add_argument("--bottom", type=int, metavar="K", help="table of the K lowest capacities")
    cap.add_argument(
        "--out",
        metavar="FILE",
        help="write feature, capacity, leverage, norm, label per feature (.npy or .csv)",
    )
    cap.add_argument(
        "--blocks",
        action="store_true",
        help="find block-semi-orthogonal blocks (capalloc.geometry.find_blocks)",
    )
    cap.add_argument(
        "--tol",
        type=float,
        default=None,
        help="--blocks: join features whose |cos| exceeds TOL, drop columns with "
        "N_i <= TOL max N (default: find_blocks' own, 1e-6)",
    )
    cap.add_argument("--hist", metavar="FILE.png", help="write a histogram coloured by label")
    cap.add_argument(
        "--hist-range",
        choices=("auto", "log", "unit"),
        default="auto",
        help="histogram x axis: the capacities' own range (auto), log scale, or [0, 1]",
    )
    cap.add_argument("--bins", type=int, metavar="N", help="histogram bins (default ~sqrt(n))")
    cap.add_argument(
        "--progress",
        action="store_true",
        help="progress bars on stderr (default: on a terminal, for long reports)",
    )
    cap.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="BLAS threads (default: the cores no other process is using, for large matrices)",
    )
    cap.add_argument("--json", action="store_true", help="print one JSON object")
    cap.add_argument(
        "--max-rows",
        type=int,
        default=30,
        metavar="N",
        help="rows of the block table before truncation (0: all)",
    )
    cap.set_defaults(func=_cmd_capacity)
    return cap
