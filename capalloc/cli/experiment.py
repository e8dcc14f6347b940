"""The ``capalloc experiment`` subcommands (registered by :mod:`capalloc.cli.main`).

``capalloc experiment sparsity``
    Train toy models over input sparsities (resumable sweep) and print the
    polysemantic fraction per model and sparsity, with the exact quadratic curve.
``capalloc experiment phase-diagram -o FILE.png``
    Draw the exact two-feature, one-neuron phase diagram (optionally with trained
    points) and the marginal-benefit panels.
``capalloc experiment toy-phase``
    The exact n = 2, d = 1 ReLU-autoencoder diagram against trained models.
``capalloc experiment tms-geometry``
    Dimensions per feature of ReLU autoencoders versus density (Elhage et al.).
``capalloc experiment monosemanticity``
    Jermyn et al.'s interventions and the neuron-level monosemanticity.
``capalloc experiment incidental``
    Polysemantic neurons with ``d >= n`` against Lecomte et al.'s :math:`n^2/(4d)`.

Each handler takes the parsed arguments and returns an exit status; heavy
modules (torch, matplotlib) load inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from capalloc._lib.tables import format_table
from capalloc.cli._output import figure_path, print_json
from capalloc.cli._types import MODELS as _MODELS
from capalloc.cli._types import non_negative_int as _non_negative_int
from capalloc.cli._types import positive as _positive
from capalloc.cli._types import sparsity as _sparsity

__all__ = ["add_experiment_parser", "DEFAULT_OUT_DIR", "DEFAULT_PHASE_POINTS"]

#: Default resume directory of ``experiment sparsity`` (relative to the working directory).
DEFAULT_OUT_DIR = os.path.join(".capalloc-sweeps", "sparsity")
#: (kurtosis, ratio) points trained by ``experiment phase-diagram --trained``.
DEFAULT_PHASE_POINTS = (
    (4.0, 0.3),
    (4.0, 3.0),
    (6.0, 0.5),
    (8.0, 2.5),
    (10.0, 0.7),
    (15.0, 0.25),
    (20.0, 1.0),
    (12.0, 4.0),
)
_CELL_BYTES = 400  # peak memory of phase-diagram per grid cell (measured: ~310 bytes)
_MAX_DPI = 2400  # the 11-inch figure stays below matplotlib's 2**16 pixels a side


def add_experiment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``experiment sparsity`` and ``experiment phase-diagram`` on ``subparsers``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level ``add_subparsers()`` object of the ``capalloc`` parser.

    Returns
    -------
    parser : argparse.ArgumentParser
        The ``experiment`` parser. Every leaf sets ``func`` (``args -> int``).

    Examples
    --------
    >>> import argparse
    >>> from capalloc.cli.experiment import add_experiment_parser
    >>> top = argparse.ArgumentParser(prog="capalloc")
    >>> _ = add_experiment_parser(top.add_subparsers())
    >>> args = top.parse_args(["experiment", "sparsity", "--model", "relu", "--seeds", "2"])
    >>> args.model, args.seeds, args.func.__name__
    (['relu'], 2, '_cmd_sparsity')
    """
    from capalloc.experiments.reproductions import DEFAULT_SPARSITIES

    exp = subparsers.add_parser(
        "experiment",
        help="reproduction experiments (sparsity sweep, phase diagram)",
        description="Reproduction experiments of Scherlis et al. (arXiv:2210.01892).",
    )
    exp.set_defaults(func=lambda args: _usage(exp))
    sub = exp.add_subparsers(metavar="EXPERIMENT")

    sp = sub.add_parser(
        "sparsity",
        help="polysemantic fraction of trained toy models versus sparsity",
        description="Train toy models at several sparsities (seeds in one batch per point) "
        "and report the fraction of represented features that are polysemantic. "
        "Points are saved in --out-dir as they finish; a rerun resumes.",
    )
    sp.add_argument(
        "--model",
        nargs="+",
        choices=_MODELS,
        default=["quadratic"],
        help="model(s) to train (default: quadratic)",
    )
    sp.add_argument(
        "--sparsities",
        nargs="+",
        type=_sparsity,
        default=list(DEFAULT_SPARSITIES),
        metavar="S",
        help="sparsities in [0, 1) (default: %(default)s)",
    )
    sp.add_argument("--seeds", type=_positive(int), default=3, help="instances per point")
    sp.add_argument("--steps", type=_positive(int), default=2000, help="Adam steps")
    sp.add_argument("--n", type=_positive(int), default=20, help="number of features")
    sp.add_argument("--d", type=_positive(int), default=10, help="embedding dimension")
    sp.add_argument("--batch-size", type=_positive(int), default=1024)
    sp.add_argument("--lr", type=_positive(float), default=1e-2, help="initial learning rate")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    sp.add_argument(
        "--workers",
        type=_non_negative_int,
        default=None,
        help="worker processes (default: CPU count; 0: run in this process)",
    )
    sp.add_argument(
        "--out-dir",
        default=DEFAULT_OUT_DIR,
        help="resume directory of the sweep (default: %(default)s)",
    )
    sp.add_argument("--no-exact", action="store_true", help="omit the exact quadratic-model rows")
    sp.add_argument("--json", action="store_true", help="print a JSON list of rows")
    sp.add_argument("--plot", metavar="FILE.png", help="also save the figure")
    sp.add_argument(
        "--plot-blocks", metavar="FILE.png", help="also save the block-size distribution per model"
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_sparsity)

    pd = sub.add_parser(
        "phase-diagram",
        help="exact regime map of two features in one neuron",
        description="Solve the quadratic model exactly on a resolution x resolution grid of "
        "(kurtosis, relative importance) in one batched problem and draw the "
        "regime map, the boundary K = 1 + 2 max(r, 1/r) and marginal-benefit "
        "panels.",
    )
    pd.add_argument("-o", "--output", required=True, metavar="FILE.png", help="figure file")
    pd.add_argument("--resolution", type=_positive(int), default=200, help="grid points per axis")
    pd.add_argument("--k-max", type=_positive(float), default=25.0, help="largest kurtosis")
    pd.add_argument(
        "--trained",
        action="store_true",
        help="overlay quadratic models trained at a few points (torch)",
    )
    pd.add_argument(
        "--steps", type=_positive(int), default=1500, help="training steps for --trained"
    )
    pd.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    pd.add_argument("--dpi", type=_positive(int), default=100)
    pd.add_argument("--json", action="store_true", help="print a JSON summary")
    pd.set_defaults(func=_cmd_phase_diagram)
    _add_toy_parsers(sub)
    from capalloc.cli.predict import add_predict_parsers

    add_predict_parsers(sub)
    return exp


def _density(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"density must be a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"density must lie in (0, 1], got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"relative importance must be a number, got {text!r}"
        ) from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"relative importance must lie in (0, 1], got {text!r}")
    return value


def _add_run_options(
    p: argparse.ArgumentParser,
    *,
    seeds: int,
    steps: int = 3000,
    batch_size: int | None = None,
    plot: bool = False,
) -> None:
    """The training options shared by the trained experiments, and ``--json`` (``--plot``)."""
    p.add_argument(
        "--seeds", type=_positive(int), default=seeds, help="trained instances per point"
    )
    p.add_argument("--steps", type=_positive(int), default=steps, help="optimiser steps")
    if batch_size is not None:
        p.add_argument("--batch-size", type=_positive(int), default=batch_size)
    p.add_argument("--lr", type=_positive(float), default=1e-2)
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    if plot:
        p.add_argument("--plot", metavar="FILE.png", help="also save the figure")


def _add_toy_parsers(sub: Any) -> None:
    """``toy-phase`` (and the other issue-15 experiments) on the experiment subparsers."""
    tp = sub.add_parser(
        "toy-phase",
        help="exact n = 2, d = 1 ReLU-autoencoder diagram against trained models",
        description="For each (density, relative importance) cell: the exact optimum of the "
        "two-feature, one-dimension ReLU autoencoder (closed-form losses minimised over (W, b) "
        "with scipy), the best closed-form candidate (none, one, antipodal) and the "
        "configuration of trained models.",
    )
    tp.add_argument(
        "--densities",
        nargs="+",
        type=_density,
        default=[0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0],
        metavar="P",
        help="densities in (0, 1] (default: %(default)s)",
    )
    tp.add_argument(
        "--ratios",
        nargs="+",
        type=_ratio,
        default=[0.1, 0.25, 0.5, 0.75, 1.0],
        metavar="R",
        help="relative importances of the weaker feature, in (0, 1] (default: %(default)s)",
    )
    tp.add_argument("--no-train", action="store_true", help="exact diagram only (no torch)")
    _add_run_options(tp, seeds=3, plot=True)
    tp.set_defaults(func=_cmd_toy_phase)

    tg = sub.add_parser(
        "tms-geometry",
        help="dimensions per feature D* = d/|W|_F^2 of ReLU autoencoders versus density",
        description="Elhage et al.'s uniform-importance sweep at a CPU size: train ReLU "
        "autoencoders (n features of equal importance, d dimensions) at several densities "
        "in one batch and report D* and the per-feature dimensionalities, binned at the "
        "fractions 1, 3/4, 2/3, 1/2, 2/5, 3/8.",
    )
    tg.add_argument("--n", type=_positive(int), default=100, help="number of features")
    tg.add_argument("--d", type=_positive(int), default=10, help="embedding dimension")
    tg.add_argument(
        "--densities",
        nargs="+",
        type=_density,
        default=[1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01],
        metavar="P",
        help="densities in (0, 1] (default: %(default)s)",
    )
    _add_run_options(tg, seeds=1, batch_size=1024, plot=True)
    tg.set_defaults(func=_cmd_tms_geometry)

    from capalloc.experiments.monosemanticity import INTERVENTIONS

    mo = sub.add_parser(
        "monosemanticity",
        help="Jermyn et al.'s interventions and the neuron-level monosemanticity",
        description="Train the neuron model (h = ReLU(Wx + c), x^ = ReLU(W^T h + b)) under a "
        "baseline and each intervention (negative initial hidden bias, bias decay, more "
        "neurons, higher learning rate) and count monosemantic (max/sum > 0.999), "
        "polysemantic and dead neurons.",
    )
    mo.add_argument("--n", type=_positive(int), default=16, help="number of features")
    mo.add_argument("--d", type=_positive(int), default=32, help="neurons of the baseline")
    mo.add_argument("--density", type=_density, default=None, help="default 1/n")
    mo.add_argument(
        "--interventions",
        nargs="+",
        choices=list(INTERVENTIONS),
        default=list(INTERVENTIONS),
        metavar="NAME",
        help="among: %(choices)s",
    )
    _add_run_options(mo, seeds=4, batch_size=512)
    mo.set_defaults(func=_cmd_monosemanticity)

    ic = sub.add_parser(
        "incidental",
        help="incidental polysemanticity: polysemantic neurons with d >= n, against n^2/(4d)",
        description="Train the neuron model with at least as many neurons as features and an "
        "L1 penalty on the activations, and count polysemantic neurons (Jermyn et al.'s "
        "measure) against Lecomte et al.'s estimate n^2/(4d).",
    )
    ic.add_argument("--n", type=_positive(int), default=16, help="number of features")
    ic.add_argument(
        "--ds", nargs="+", type=_positive(int), default=[16, 32, 64], help="neuron counts >= n"
    )
    ic.add_argument("--density", type=_density, default=None, help="default 1/n")
    ic.add_argument("--l1", type=_positive(float), default=0.03, help="activation L1 penalty")
    _add_run_options(ic, seeds=4, batch_size=512)
    ic.set_defaults(func=_cmd_incidental)


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The run options of :func:`_add_run_options` as keyword arguments (device checked)."""
    from capalloc.training.torch_models import resolve_device

    resolve_device(args.device)
    names = ("seeds", "steps", "batch_size", "lr", "device", "seed")
    return {k: getattr(args, k) for k in names if hasattr(args, k)}


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], headers, cells) -> int:
    """Rows as JSON (``--json``) or as a table of ``cells(row)``."""
    if args.json:
        print_json(rows, indent=1)
    else:
        print(format_table(headers, [cells(r) for r in rows], align="left", rule=True))
    return 0


def _cmd_incidental(args: argparse.Namespace) -> int:
    from capalloc.experiments.incidental import incidental_polysemanticity

    if min(args.ds) < args.n:
        raise ValueError(f"--ds must be >= --n {args.n}, got {min(args.ds)}")
    rows = incidental_polysemanticity(
        args.n, args.ds, args.density, activation_l1=args.l1, **_run_kwargs(args)
    )
    headers = ("n", "d", "poly (per seed)", "mean", "n^2/(4d)", "dead", "loss", "s")
    return _report(
        args,
        rows,
        headers,
        lambda r: (
            str(r["n"]),
            str(r["d"]),
            " ".join(map(str, r["polysemantic"])),
            f"{r['polysemantic_mean']:.2f}",
            f"{r['expected']:.2f}",
            " ".join(map(str, r["dead"])),
            f"{r['loss']:.3g}",
            f"{r['train_seconds']:.0f}",
        ),
    )


def _cmd_monosemanticity(args: argparse.Namespace) -> int:
    from capalloc.experiments.monosemanticity import monosemanticity_interventions

    rows = monosemanticity_interventions(
        args.n, args.d, args.density, interventions=args.interventions, **_run_kwargs(args)
    )
    headers = ("intervention", "neurons", "mono", "dead", "mono frac", "mean M", "loss", "s")
    return _report(
        args,
        rows,
        headers,
        lambda r: (
            r["intervention"],
            str(r["neurons"]),
            " ".join(map(str, r["monosemantic"])),
            " ".join(map(str, r["dead"])),
            f"{r['monosemantic_fraction']:.3f}",
            f"{r['mean_monosemanticity']:.3f}",
            f"{r['loss']:.3g}",
            f"{r['train_seconds']:.0f}",
        ),
    )


def _cmd_tms_geometry(args: argparse.Namespace) -> int:
    from capalloc.experiments.tms_geometry import plot_tms_geometry, tms_geometry
    from capalloc.training.torch_models import resolve_device

    plot = figure_path(args.plot, "tms_geometry.png", "--plot") if args.plot else None
    resolve_device(args.device)
    rows = tms_geometry(
        args.n,
        args.d,
        args.densities,
        seeds=args.seeds,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
    )
    if plot:
        ax = plot_tms_geometry(rows)
        ax.figure.savefig(plot, dpi=100, bbox_inches="tight")
    if args.json:
        print_json(rows, indent=1)
        return 0
    names = list(rows[0]["fractions"])
    body = [
        (
            f"{r['density']:g}",
            f"{r['dimensions_per_feature']:.3f}",
            *(str(r["fractions"][k]) for k in names),
            f"{r['loss']:.4g}",
        )
        for r in rows
    ]
    print(format_table(("density", "D*", *names, "loss"), body, align="left", rule=True))
    print(f"\ntrained in {rows[0]['train_seconds']:.1f} s" + (f"; saved {plot}" if plot else ""))
    return 0


def _cmd_toy_phase(args: argparse.Namespace) -> int:
    from capalloc.experiments.toy_phase import plot_toy_phase, toy_phase

    plot = figure_path(args.plot, "toy_phase.png", "--plot") if args.plot else None
    if not args.no_train:
        from capalloc.training.torch_models import resolve_device

        resolve_device(args.device)
    start = time.perf_counter()
    rows = toy_phase(
        args.densities,
        args.ratios,
        train=not args.no_train,
        seeds=args.seeds,
        steps=args.steps,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - start
    if plot:
        ax = plot_toy_phase(rows)
        ax.figure.savefig(plot, dpi=100, bbox_inches="tight")
    if args.json:
        print_json(rows, indent=1)
        return 0
    headers = ("density", "r", "trained", "exact", "exact kind", "candidate", "loss", "exact loss")
    body = [
        (
            f"{r['density']:g}",
            f"{r['relative_importance']:g}",
            r["trained"] or "-",
            r["exact"],
            r["exact_kind"],
            r["candidate"],
            "-" if "trained_loss" not in r else f"{r['trained_loss']:.5g}",
            f"{r['exact_loss']:.5g}",
        )
        for r in rows
    ]
    print(format_table(headers, body, align="left", rule=True))
    trained = [r for r in rows if r["trained"] is not None]
    if trained:
        agree = sum(r["trained"] == r["exact"] for r in trained)
        print(f"\ntrained configuration = exact optimum in {agree}/{len(trained)} cells")
    print(f"{len(rows)} cells in {elapsed:.1f} s" + (f"; saved {plot}" if plot else ""))
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print(
        "capalloc experiment: error: choose an experiment (sparsity, phase-diagram, toy-phase, "
        "tms-geometry, monosemanticity, incidental)",
        file=sys.stderr,
    )
    return 2


def _fmt(mean: Any, std: Any = None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if not std else f"{mean:.3f} ± {std:.3f}"


def _table(rows: Sequence[dict[str, Any]]) -> str:
    headers = (
        "model",
        "sparsity",
        "K",
        "poly frac",
        "poly frac (all)",
        "cap. held by poly",
        "blocks (dim x k: count)",
        "loss",
        "time s",
    )
    body = []
    for r in rows:
        blocks = r.get("block_shapes")
        body.append(
            (
                r["model"],
                f"{r['sparsity']:g}",
                "-" if r.get("kurtosis") is None else f"{r['kurtosis']:.4g}",
                _fmt(r["polysemantic_fraction"], r.get("polysemantic_fraction_std")),
                _fmt(r["polysemantic_fraction_all"], r.get("polysemantic_fraction_all_std")),
                _fmt(r["capacity_held_by_poly"], r.get("capacity_held_by_poly_std")),
                "-" if not blocks else " ".join(f"{k}:{v}" for k, v in blocks.items()),
                f"{r['loss']:.4g}",
                f"{r['elapsed']:.1f}" if "elapsed" in r else "-",
            )
        )
    return format_table(headers, body, align="left", rule=True)


def _training_bytes(seeds: int, n: int, d: int, batch_size: int) -> int:
    """Rough peak memory of training one sweep point (float32 batches, activations, Adam)."""
    return 16 * seeds * n * (batch_size + 4 * d)


def _cmd_sparsity(args: argparse.Namespace) -> int:
    from capalloc._lib.validation import short
    from capalloc.experiments.reproductions import (
        plot_block_sizes,
        plot_sparsity_sweep,
        sparsity_sweep,
    )
    from capalloc.io import check_memory
    from capalloc.training.torch_models import resolve_device

    sizes = " ".join(
        f"--{k} {short(getattr(args, k.replace('-', '_')), 24)}"
        for k in ("seeds", "n", "d", "batch-size")
    )
    check_memory(
        _training_bytes(args.seeds, args.n, args.d, args.batch_size), f"training with {sizes}"
    )
    plot = figure_path(args.plot, "sparsity_sweep.png", "--plot") if args.plot else None
    plot_blocks = (
        figure_path(args.plot_blocks, "block_sizes.png", "--plot-blocks")
        if args.plot_blocks
        else None
    )
    resolve_device(args.device)  # fail early, before any worker starts
    start = time.perf_counter()
    rows = sparsity_sweep(
        args.model,
        args.sparsities,
        args.seeds,
        n=args.n,
        d=args.d,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        exact=not args.no_exact,
        out_dir=args.out_dir,
        workers=args.workers,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    elapsed = time.perf_counter() - start
    if plot:
        ax = plot_sparsity_sweep(rows)
        ax.figure.savefig(plot, dpi=100, bbox_inches="tight")
    if plot_blocks:
        ax = plot_block_sizes(rows, min_sparsity=0.5)
        ax.figure.savefig(plot_blocks, dpi=100, bbox_inches="tight")
    if args.json:
        print_json(rows, indent=1)
    else:
        print(_table(rows))
        print(f"\n{len(rows)} rows in {elapsed:.1f} s (results kept in {args.out_dir})")
    return 0


def _cmd_phase_diagram(args: argparse.Namespace) -> int:
    import numpy as np

    from capalloc import label_counts
    from capalloc._lib.validation import short
    from capalloc.experiments.reproductions import (
        phase_diagram,
        plot_phase_diagram,
        train_phase_points,
    )
    from capalloc.io import check_memory

    res = args.resolution
    if args.k_max <= 1.2:
        raise ValueError(f"--k-max must exceed 1.2, got {args.k_max!r}")
    if args.dpi > _MAX_DPI:
        raise ValueError(f"--dpi must be at most {_MAX_DPI}, got {short(args.dpi)}")
    check_memory(
        res * res * _CELL_BYTES, f"--resolution {short(res)}: solving {short(res * res)} grid cells"
    )
    output = figure_path(args.output, "phase_diagram.png", "-o")
    diagram = phase_diagram(np.linspace(1.2, args.k_max, res), np.geomspace(0.1, 10.0, res))
    trained = None
    if args.trained:
        from capalloc.training.torch_models import resolve_device

        resolve_device(args.device)
        pts = [p for p in DEFAULT_PHASE_POINTS if p[0] <= args.k_max]
        trained = train_phase_points(pts, steps=args.steps, device=args.device)
    fig = plot_phase_diagram(diagram, trained)
    fig.savefig(output, dpi=args.dpi)
    summary: dict[str, Any] = {
        "output": output,
        "grid": list(diagram.regime.shape),
        "solve_seconds": diagram.elapsed,
        "cells": label_counts(diagram.labels),
        "trained": trained,
    }
    if args.json:
        print_json(summary, indent=1)
    else:
        cells = ", ".join(f"{k} {v}" for k, v in summary["cells"].items())
        print(
            f"phase diagram {res}x{res} solved in {diagram.elapsed:.2f} s ({cells}); saved {output}"
        )
        if trained:
            agree = sum(t["label"] == t["exact_label"] for t in trained)
            print(f"trained points agreeing with the exact regime: {agree}/{len(trained)}")
    return 0
