"""``capalloc experiment predict``, ``separability`` and ``frontier`` (``--interventions``) (issue 17).

Registered on the ``experiment`` subparsers by :mod:`capalloc.cli.experiment`.

Examples
--------
>>> import argparse
>>> from capalloc.cli.predict import add_predict_parsers
>>> top = argparse.ArgumentParser(prog="capalloc")
>>> add_predict_parsers(top.add_subparsers())
>>> args = top.parse_args(["predict", "--model", "relu-ae", "--sparsities", "0.5", "0.9"])
>>> args.model, args.sparsities, args.func.__name__
('relu-ae', [0.5, 0.9], '_cmd_predict')
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from capalloc.cli._output import print_json
from capalloc.cli._types import MODELS as _MODELS
from capalloc.cli._types import positive_int as _positive_int
from capalloc.cli._types import sparsity as _sparsity

__all__ = ["add_predict_parsers"]


def add_predict_parsers(sub: Any) -> None:
    """Add ``predict`` to the ``experiment`` subparsers ``sub``."""
    pp = sub.add_parser(
        "predict",
        help="predicted capacities (exact small-configuration losses) against trained models",
        description="Predict per-feature capacities from first principles (ReLU autoencoder: "
        "exact losses of columns, antipodal pairs, polygons and ignored features; "
        "quadratic: the exact solver; relu/gelu: the quadratic optimum as a surrogate), "
        "train the model and report both with the mean |C_pred - C_trained| over sorted "
        "features.",
    )
    pp.add_argument("--model", choices=_MODELS, default="relu-ae")
    pp.add_argument("--n", type=_positive_int, default=None, help="features (20; 50 uniform)")
    pp.add_argument("--d", type=_positive_int, default=10, help="embedding dimension")
    pp.add_argument("--importance", choices=("decay", "uniform"), default="decay")
    pp.add_argument(
        "--sparsities",
        nargs="+",
        type=_sparsity,
        default=None,
        metavar="S",
        help="sparsities in [0, 1) (default 0.5 0.8 0.9; uniform: 0.7 0.9 0.97)",
    )
    pp.add_argument("--seeds", type=_positive_int, default=3, help="trained instances per point")
    pp.add_argument("--steps", type=_positive_int, default=2000, help="Adam steps")
    pp.add_argument("--seed", type=int, default=0)
    pp.add_argument(
        "--restarts",
        type=_positive_int,
        default=1,
        help="independent initialisations per seed; the lowest final loss is kept (default 1)",
    )
    pp.add_argument("--no-train", action="store_true", help="prediction only (no torch)")
    pp.add_argument("--json", action="store_true", help="print a JSON list of rows")
    pp.set_defaults(func=_cmd_predict)

    sp = sub.add_parser(
        "separability",
        help="how much of a trained model's loss survives rotating its hidden space",
        description="Train the model, rotate W -> QW (capacities unchanged), re-optimise the "
        "output bias and report rho = L(QW)/L(W): 1 where the loss is a function of W^T W "
        "(quadratic, relu-ae), above 1 where the model relies on its neuron basis.",
    )
    sp.add_argument("--model", choices=_MODELS, default="relu")
    sp.add_argument("--n", type=_positive_int, default=20, help="number of features")
    sp.add_argument("--d", type=_positive_int, default=10, help="embedding dimension")
    sp.add_argument("--importance", choices=("decay", "uniform"), default="decay")
    sp.add_argument("--sparsities", nargs="+", type=_sparsity, default=[0.5, 0.8, 0.9], metavar="S")
    sp.add_argument("--seeds", type=_positive_int, default=3, help="trained instances per point")
    sp.add_argument("--steps", type=_positive_int, default=2000, help="Adam steps")
    sp.add_argument("--rotations", type=_positive_int, default=8, help="rotations per angle")
    sp.add_argument(
        "--angles",
        nargs="+",
        type=_angle,
        default=[0.01, 0.1, None],
        metavar="A",
        help="largest rotation angles in radians, or 'haar' (default 0.01 0.1 haar)",
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--json", action="store_true", help="print a JSON list of rows")
    sp.set_defaults(func=_cmd_separability)

    lc = sub.add_parser(
        "loss-curve",
        help="loss of a trained model with one feature held at each of several capacities",
        description="Train one instance per target capacity c with the penalty "
        "strength * L * (C_i - c)^2 and report the loss and the capacity reached (the "
        "quadratic model also gets its exact curve, l_i(c) + the others' optimum on d - c).",
    )
    lc.add_argument("--model", choices=_MODELS, default="relu-ae")
    lc.add_argument("--feature", type=int, default=4, help="index of the held feature")
    lc.add_argument(
        "--capacities",
        nargs="+",
        type=float,
        default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        metavar="C",
        help="target capacities in [0, 1]",
    )
    lc.add_argument("--n", type=_positive_int, default=20, help="number of features")
    lc.add_argument("--d", type=_positive_int, default=10, help="embedding dimension")
    lc.add_argument("--sparsity", type=_sparsity, default=0.8)
    lc.add_argument("--importance", choices=("decay", "uniform"), default="decay")
    lc.add_argument("--steps", type=_positive_int, default=3000, help="Adam steps")
    lc.add_argument("--seed", type=int, default=0)
    lc.add_argument("--json", action="store_true", help="print a JSON list of rows")
    lc.set_defaults(func=_cmd_loss_curve)

    fr = sub.add_parser(
        "frontier",
        help="loss versus polysemantic fraction under the capacity penalty sum C(1 - C)",
        description="Train the model on loss + strength * sum_i C_i (1 - C_i) for several "
        "strengths and report the unpenalised loss and the polysemantic fraction. With "
        "--interventions, also train from negative initial biases and with wider embeddings "
        "(Jermyn et al.'s interventions) and report all three, measured the same way.",
    )
    fr.add_argument("--model", choices=_MODELS, default="relu-ae")
    fr.add_argument(
        "--strengths",
        nargs="+",
        type=_strength,
        default=None,
        metavar="L",
        help="penalty strengths >= 0 (default 0 0.003 0.01 0.03 0.1 0.3)",
    )
    fr.add_argument("--n", type=_positive_int, default=20, help="number of features")
    fr.add_argument("--d", type=_positive_int, default=10, help="embedding dimension")
    fr.add_argument("--sparsity", type=_sparsity, default=0.8)
    fr.add_argument("--seeds", type=_positive_int, default=2, help="instances per strength")
    fr.add_argument("--steps", type=_positive_int, default=2000, help="Adam steps")
    fr.add_argument("--seed", type=int, default=0)
    fr.add_argument(
        "--interventions",
        action="store_true",
        help="compare the penalty with negative initial biases and wider embeddings",
    )
    fr.add_argument(
        "--biases",
        nargs="+",
        type=float,
        default=None,
        metavar="B",
        help="initial biases with --interventions (default 0 -0.1 -0.2 -0.3 -0.5 -1)",
    )
    fr.add_argument(
        "--widths",
        nargs="+",
        type=int,
        default=None,
        metavar="W",
        help="embedding widths d' with --interventions (default d, two between, n)",
    )
    fr.add_argument(
        "--fixed-bias",
        action="store_true",
        help="with --interventions: hold the bias at its initial value instead of training it",
    )
    fr.add_argument("--json", action="store_true", help="print a JSON list of rows")
    fr.set_defaults(func=_cmd_frontier)


def _angle(text: str) -> float | None:
    if text.lower() == "haar":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"angle must be a number or 'haar', got {text!r}"
        ) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"angle must be a positive number, got {text!r}")
    return value


def _options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The parsed options ``names`` as keyword arguments."""
    return {name: getattr(args, name) for name in names}


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], header: str, line: Any) -> int:
    """Print ``rows`` as JSON (``--json``) or as a table: ``header``, then ``line(row)``."""
    if args.json:
        print_json(rows)
        return 0
    print(header)
    for r in rows:
        print(line(r))
    return 0


def _cmd_separability(args: argparse.Namespace) -> int:
    from capalloc.prediction.separability import basis_dependence

    rows = basis_dependence(
        args.model,
        **_options(args, "n", "d", "importance", "sparsities", "seeds", "steps"),
        **_options(args, "rotations", "angles", "seed"),
    )

    def line(r: dict[str, Any]) -> str:
        angle = "haar" if r["angle"] is None else f"{r['angle']:g}"
        return (
            f"{r['model']:<9} {r['sparsity']:<6g} {angle:<6} {r['loss']:<10.6f} "
            f"{r['ratio']:<8.4g} {r['ratio_min']:<8.4g} {r['ratio_max']:.4g}"
        )

    return _report(args, rows, "model     S      angle  loss       rho      rho_min  rho_max", line)


def _cmd_loss_curve(args: argparse.Namespace) -> int:
    from capalloc.prediction.curves import constrained_loss_curve

    rows = constrained_loss_curve(
        args.model,
        **_options(args, "feature", "capacities", "n", "d", "sparsity", "importance"),
        **_options(args, "steps", "seed"),
    )

    def line(r: dict[str, Any]) -> str:
        exact = "-" if r["exact"] is None else f"{r['exact']:.6f}"
        return f"{r['target']:<7g} {r['capacity']:<9.4f} {r['loss']:<10.6f} {exact}"

    return _report(args, rows, "target  capacity  loss       exact", line)


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"strength must be a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"strength must be a finite number >= 0, got {text!r}")
    return value


def _cmd_frontier(args: argparse.Namespace) -> int:
    from capalloc.prediction.regularise import (
        DEFAULT_BIASES,
        DEFAULT_STRENGTHS,
        frontier,
        interventions,
    )

    if args.interventions:
        return _cmd_interventions(args, DEFAULT_BIASES, DEFAULT_STRENGTHS, interventions)
    extra = [
        flag
        for flag, given in (
            ("--biases", args.biases is not None),
            ("--widths", args.widths is not None),
            ("--fixed-bias", args.fixed_bias),
        )
        if given
    ]
    if extra:
        raise ValueError(f"{extra[0]} needs --interventions")
    rows = frontier(
        args.model,
        args.strengths or DEFAULT_STRENGTHS,
        **_options(args, "n", "d", "sparsity", "seeds", "steps", "seed"),
    )
    return _report(
        args,
        rows,
        "strength  loss      polysemantic_fraction",
        lambda r: f"{r['strength']:<9g} {r['loss']:<9.5f} {r['polysemantic_fraction']:.3f}",
    )


def _cmd_interventions(
    args: argparse.Namespace, biases: Any, strengths: Any, interventions: Any
) -> int:
    rows = interventions(
        args.model,
        strengths=args.strengths or strengths,
        biases=args.biases or biases,
        **_options(args, "widths", "fixed_bias", "n", "d", "sparsity", "seeds", "steps", "seed"),
    )
    return _report(
        args,
        rows,
        "intervention  value     width  loss      polysemantic_fraction  total_capacity",
        lambda r: (
            f"{r['intervention']:<13} {r['value']:<9g} {r['width']:<6d} {r['loss']:<9.5f} "
            f"{r['polysemantic_fraction']:<22.3f} {r['total_capacity']:.2f}"
        ),
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    from capalloc.prediction.compare import make_importance, predict_capacity, prediction_rows

    uniform = args.importance == "uniform"
    n = args.n if args.n is not None else (50 if uniform else 20)
    sparsities = args.sparsities or ([0.7, 0.9, 0.97] if uniform else [0.5, 0.8, 0.9])
    if args.no_train:
        v = make_importance(n, args.importance)
        rows = [
            {
                "model": args.model,
                "sparsity": s,
                "importance": args.importance,
                "n": n,
                "d": args.d,
                "trained_capacity": None,
                "predicted_capacity": np.sort(predict_capacity(args.model, v, args.d, s))[::-1]
                .round(4)
                .tolist(),
            }
            for s in sparsities
        ]
    else:
        rows = prediction_rows(
            args.model,
            n=n,
            d=args.d,
            importance=args.importance,
            sparsities=sparsities,
            seeds=args.seeds,
            steps=args.steps,
            seed=args.seed,
            restarts=args.restarts,
        )
    if args.json:
        print_json(rows)
        return 0
    for row in rows:
        err = row.get("mean_error")
        head = f"{row['model']}  S={row['sparsity']:g}"
        print(head + ("" if err is None else f"  mean |dC| = {err:.4f}"))
        print("  predicted:", " ".join(f"{c:.2f}" for c in row["predicted_capacity"]))
        for c in row["trained_capacity"] or []:
            print("  trained:  ", " ".join(f"{x:.2f}" for x in c))
    return 0
