"""The ``capalloc`` command line.

Subcommands
-----------
``capalloc demo``
    Solve a representative allocation problem, print it and draw it.
``capalloc solve``
    Solve a quadratic-model allocation problem given importances, ``d`` and
    the input law (kurtosis, or sparsity of a base law).
``capalloc capacity``
    Capacity report for a weight matrix (:mod:`capalloc.cli.capacity`).
``capalloc bench``
    Solver benchmark table.
``capalloc experiment``
    Reproduction experiments (when :mod:`capalloc.cli.experiment` is installed).

Every subcommand handler takes the parsed arguments and returns an exit
code. Bad input ends with one line ``capalloc: error: ...`` on stderr and exit
status 2 (set ``CAPALLOC_TRACEBACK=1`` to see the traceback instead).

The command parses and prints only: importance SPECs are
:func:`capalloc.profiles.parse_profile`, sparsities become kurtoses through
:func:`capalloc.distributions.sparse_kurtosis`, label counts are
:func:`capalloc.label_counts`. Output streams: a table formats only the rows it
shows (``--max-rows``), and ``--json`` writes the per-feature arrays chunk by
chunk, so ``capalloc solve`` on ten million features costs little more than the
solve itself.

Examples
--------
>>> from capalloc.cli.main import main, parse_vector
>>> parse_vector("geometric:0.5:4").tolist()
[1.0, 0.5, 0.25, 0.125]
>>> main(["solve", "--importance", "3,2,1", "--d", "1", "--kurtosis", "10"])  # doctest: +ELLIPSIS
n = 3 features, d = 1, K = 10 (given kurtosis)
feature  importance  capacity         label
      0           3    0.6...
0
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._capacity import classify
from capalloc._lib.validation import MAX_COUNT, short
from capalloc.cli._output import Chunked, CliError, write_json
from capalloc.cli._output import counts_text as _counts_text
from capalloc.cli._output import figure_path as _figure_path
from capalloc.cli._output import save_figure as _save_figure
from capalloc.cli._output import table as _table

__all__ = ["main", "build_parser", "parse_vector", "sparse_kurtosis"]

_BASES = {"gaussian": "Gaussian", "uniform": "Uniform", "rademacher": "Rademacher"}
_DEMO = {"n": 12, "ratio": 0.8, "d": 5, "p": 0.2}
# Peak memory of `capalloc solve` per feature. Measured (RSS slope from n = 1e6 to 1e7):
# ~25 bytes for the table, ~40 with --json (streamed), ~66 with -m scipy.
_FEATURE_BYTES = 100
_LABEL_BLOCK = 4096  # features classified at a time for the table and the JSON labels


# ----------------------------------------------------------------------------- input parsing


def _check_features(n: int, what: str) -> None:
    """Refuse, before allocating, more features than ``capalloc solve`` can hold in memory."""
    from capalloc.io import check_memory

    check_memory(n * _FEATURE_BYTES, f"{what}: solving {short(n)} features")


def parse_vector(spec: str, what: str = "importance") -> np.ndarray:
    """A float vector from a command-line SPEC (:func:`capalloc.profiles.parse_profile`).

    Before anything is allocated, a list or generator longer than ``capalloc
    solve`` can hold in memory is refused.

    Parameters
    ----------
    spec : str
        A comma-separated list, a ``.npy``/``.npz``/``.txt``/``.csv``/``.tsv`` file,
        or a generator ``geometric:RATIO:N``, ``powerlaw:EXPONENT:N``,
        ``uniform:N[:SEED]`` or ``constant:N[:VALUE]``.
    what : str
        Name used in error messages.

    Returns
    -------
    v : (n,) ndarray of float

    Examples
    --------
    >>> parse_vector("powerlaw:1:3").round(4).tolist()
    [1.0, 0.5, 0.3333]
    >>> parse_vector("1, 0.5,0.25").tolist()
    [1.0, 0.5, 0.25]
    """
    from capalloc.profiles import parse_profile, spec_length

    n = spec_length(spec, what)
    if n is not None:
        _check_features(n, f"{what} SPEC {short(str(spec).strip())}")
    return parse_profile(spec, what)


def sparse_kurtosis(sparsity: float, base: str = "gaussian") -> float:
    r"""Kurtosis of sparse inputs for ``--sparsity`` and ``--base``.

    The base law is named as on the command line; the conversion
    :math:`K = K_0 / (1 - S)` is :func:`capalloc.distributions.sparse_kurtosis`.

    Examples
    --------
    >>> sparse_kurtosis(0.5)
    6.0
    >>> sparse_kurtosis(0.5, base="uniform")
    3.6
    """
    from capalloc import distributions

    if base not in _BASES:
        raise CliError(f"--base must be one of {sorted(_BASES)}, got {base!r}")
    law = getattr(distributions, _BASES[base])()
    return float(distributions.sparse_kurtosis(sparsity, law))


def _kurtosis(args: argparse.Namespace) -> tuple[Any, str]:
    """Kurtosis (scalar or per feature) and a phrase describing where it came from."""
    if args.sparsity is not None:
        base = args.base or "gaussian"
        K = sparse_kurtosis(args.sparsity, base)
        return K, f"sparse {base} inputs: S = {args.sparsity:g}, p = {1 - args.sparsity:g}"
    if args.base is not None:
        raise CliError("--base applies to --sparsity only")
    text = args.kurtosis.strip()
    try:
        return float(text), "given kurtosis"
    except ValueError:
        return parse_vector(text, "kurtosis"), "per-feature kurtosis"


# ----------------------------------------------------------------------------- solve / demo


class _Labels:
    """Labels of a result's capacities, classified a block at a time (the last block kept)."""

    def __init__(self, result: Any):
        self.C = np.asarray(result.capacity)
        self.atol = result.label_tol
        self._block = (0, 0)
        self._labels = np.empty(0, dtype="<U12")

    def get(self, lo: int, hi: int) -> np.ndarray:
        return classify(self.C[lo:hi], atol=self.atol)

    def __getitem__(self, i: int) -> str:
        lo, hi = self._block
        if not lo <= i < hi:
            lo = i - i % _LABEL_BLOCK
            hi = min(self.C.size, lo + _LABEL_BLOCK)
            self._block, self._labels = (lo, hi), self.get(lo, hi)
        return str(self._labels[i - lo])


class _FeatureRows(Sequence):
    """The rows of the feature table, each formatted only when the table shows it."""

    def __init__(self, importance: np.ndarray, capacity: np.ndarray, labels: _Labels):
        self.v, self.C, self.labels = importance, capacity, labels

    def __len__(self) -> int:
        return self.v.size

    def __getitem__(self, i: Any) -> list[str]:
        if not isinstance(i, (int, np.integer)):
            raise TypeError("rows are read one index at a time")
        return [str(i), f"{self.v[i]:.6g}", f"{self.C[i]:.4f}", self.labels[int(i)]]


def _solve_and_report(
    importance: np.ndarray,
    d: int,
    K: Any,
    source: str,
    method: str,
    as_json: bool,
    max_rows: int,
    figure: str | None,
) -> int:
    import capalloc

    if importance.ndim != 1:
        raise CliError(f"importance must be a vector, got shape {importance.shape}")
    _check_features(importance.size, "importance")
    problem = capalloc.QuadraticProblem(importance, d=d, kurtosis=K)
    result = capalloc.solve(problem, method=method)
    kurt = problem.kurtosis
    K_out = float(kurt[0]) if kurt.size and np.all(kurt == kurt[0]) else kurt
    counts = capalloc.label_counts(result.capacity, atol=result.label_tol)
    _report_solution(problem, result, K_out, counts, source, as_json, max_rows)
    if figure:
        from capalloc import plots

        def draw(axes: Any) -> None:
            plots.plot_capacities(result, ax=axes[0])
            plots.plot_marginal_benefit(problem, result, ax=axes[1])

        _save_figure(figure, draw, 2, (11.0, 4.0), quiet=as_json)
    return 0


def _report_solution(
    problem: Any,
    result: Any,
    K_out: Any,
    counts: dict[str, int],
    source: str,
    as_json: bool,
    max_rows: int,
) -> None:
    labels = _Labels(result)
    if as_json:  # one object; the per-feature arrays stream in chunks
        write_json(
            {
                "method": result.method,
                "status": result.status,
                "message": result.message,
                "success": result.success,
                "n": problem.n,
                "d": problem.d,
                "kurtosis": K_out,
                "loss": result.loss,
                "threshold": result.threshold,
                "kkt_residual": result.kkt_residual,
                "nit": result.nit,
                "sum_capacity": float(np.sum(result.capacity)),
                "counts": counts,
                "importance": problem.importance,
                "capacity": result.capacity,
                "norms": result.norms,
                "labels": Chunked(problem.n, labels.get),
            }
        )
        return
    kurt = problem.kurtosis
    K_text = (
        f"K = {K_out:.6g}"
        if np.ndim(K_out) == 0
        else (f"K in [{kurt.min():.4g}, {kurt.max():.4g}]")
    )
    print(f"n = {problem.n} features, d = {problem.d}, {K_text} ({source})")
    rows = _FeatureRows(problem.importance, result.capacity, labels)
    print(_table(["feature", "importance", "capacity", "label"], rows, max_rows))
    total = float(np.sum(result.capacity))
    print(
        f"loss {result.loss:.6g} | threshold T = {result.threshold:.6g} | "
        f"ΣC = {total:.6g} of d = {problem.d} | {_counts_text(counts)} | "
        f"{result.method}: {result.message} (KKT residual {result.kkt_residual:.1e})"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from capalloc import distributions

    figure = None if args.no_figure else _figure_path(args.output, "capalloc_demo.png", "-o")
    n, ratio, d, p = _DEMO["n"], _DEMO["ratio"], int(_DEMO["d"]), _DEMO["p"]
    K = distributions.Sparse(distributions.Gaussian(), p=p).kurtosis
    print(
        f"capalloc demo: {n} features with importance v_i = {ratio}^i share d = {d} "
        f"dimensions;\nsparse Gaussian inputs active with probability p = {p} have "
        f"kurtosis K = 3/p = {K:g} > 3,\nso the optimum mixes monosemantic, polysemantic and "
        "ignored features.\n"
    )
    return _solve_and_report(
        ratio ** np.arange(n), d, K, f"sparsity S = {1 - p:g}", "auto", False, 0, figure
    )


def _check_max_rows(value: int) -> None:
    if value < 0:
        raise CliError(f"--max-rows must be >= 0 (0: all rows), got {short(value)}")


def _cmd_solve(args: argparse.Namespace) -> int:
    if not 0 <= args.d <= MAX_COUNT:
        raise CliError(f"-d/--d must be an integer in [0, 2**53], got {short(args.d)}")
    _check_max_rows(args.max_rows)
    figure = _figure_path(args.plot, "capalloc_solve.png", "--plot") if args.plot else None
    importance = parse_vector(args.importance)
    K, source = _kurtosis(args)
    return _solve_and_report(
        importance, args.d, K, source, args.method, args.json, args.max_rows, figure
    )


# ----------------------------------------------------------------------------- bench


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        _bench = importlib.import_module("capalloc.experiments.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "capalloc.experiments.bench":
            raise
        raise CliError(
            "capalloc bench needs capalloc.experiments.bench, which this installation lacks"
        ) from None
    run = _bench.run_solver_benchmark
    kwargs = {"progress": True} if "progress" in inspect.signature(run).parameters else {}
    rows = run(args.quick, **kwargs)
    print(_bench.format_table(rows))
    return 0


# ----------------------------------------------------------------------------- parser


#: Subcommands whose parsers live in modules of their own: ``(module, adder, help)``.
#: They are imported only when ``argv`` names them (or when no ``argv`` is given), so
#: that ``capalloc solve`` does not pay for the experiments' imports.
_LAZY_COMMANDS = {
    "capacity": (
        "capalloc.cli.capacity",
        "add_capacity_parser",
        "capacity report of a weight matrix",
    ),
    "experiment": (
        "capalloc.cli.experiment",
        "add_experiment_parser",
        "reproduction experiments (sparsity sweep, phase diagram)",
    ),
}


def _add_lazy(sub: Any, name: str, command: str | None) -> None:
    module, adder, help_text = _LAZY_COMMANDS[name]
    if command is not None and command != name:  # listed in --help, never parsed
        sub.add_parser(name, help=help_text)
        return
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    getattr(found, adder)(sub)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``capalloc`` command (subcommands included).

    With ``argv``, subcommands that ``argv`` does not name get a placeholder parser
    (their help line only), which saves importing their modules.
    """
    from capalloc import __version__

    command = None if argv is None else next((a for a in argv if not a.startswith("-")), "")

    parser = argparse.ArgumentParser(
        prog="capalloc",
        description="Optimal allocation of feature capacity in neural networks "
        "(Scherlis et al., arXiv:2210.01892).",
        epilog="Run 'capalloc COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"capalloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="solve and draw a representative allocation problem",
        description="Solve 12 features with importance 0.8^i in d = 5 "
        "dimensions for sparse Gaussian inputs (K = 15).",
    )
    demo.add_argument(
        "-o",
        "--output",
        default="capalloc_demo.png",
        metavar="FILE",
        help="figure file (default: capalloc_demo.png)",
    )
    demo.add_argument("--no-figure", action="store_true", help="do not draw the figure")
    demo.set_defaults(func=_cmd_demo)

    solve = sub.add_parser(
        "solve",
        help="optimal capacities of the quadratic model",
        description="Minimise the quadratic model's loss over capacities 0 <= C_i <= 1 with "
        "sum C_i <= d. SPEC is a comma-separated list (1,0.5,0.2), a .npy/.npz/"
        ".txt/.csv file, or a generator geometric:RATIO:N, powerlaw:EXPONENT:N "
        "(v_i = i^-EXPONENT), uniform:N[:SEED] or constant:N[:VALUE].",
    )
    solve.add_argument(
        "-v", "--importance", required=True, metavar="SPEC", help="feature importances v_i >= 0"
    )
    solve.add_argument(
        "-d",
        "--d",
        required=True,
        type=int,
        metavar="D",
        help="embedding dimension (capacity budget), D >= 0",
    )
    law = solve.add_mutually_exclusive_group(required=True)
    law.add_argument(
        "-K",
        "--kurtosis",
        metavar="K",
        help="fourth moment E[x^4] >= 1 of every feature (3 = Gaussian), or a per-feature SPEC",
    )
    law.add_argument(
        "-S",
        "--sparsity",
        type=float,
        metavar="S",
        help="fraction of zeros, as in Elhage et al.: a feature is active with "
        "probability p = 1 - S, so K = K0 / (1 - S)",
    )
    solve.add_argument(
        "--base",
        choices=sorted(_BASES),
        default=None,
        help="law of an active feature with --sparsity (default gaussian, K0 = 3; "
        "uniform K0 = 1.8; rademacher K0 = 1)",
    )
    solve.add_argument(
        "-m",
        "--method",
        default="auto",
        help="solver method (default auto; see capalloc.methods())",
    )
    solve.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object; its per-feature arrays are written in chunks, so "
        "memory stays bounded for any number of features (--max-rows does not apply)",
    )
    solve.add_argument(
        "--max-rows",
        type=int,
        default=40,
        metavar="N",
        help="rows of the table before truncation (0: all; default 40); only the rows "
        "shown are formatted",
    )
    solve.add_argument("--plot", metavar="FILE", help="also draw the allocation to FILE")
    solve.set_defaults(func=_cmd_solve)

    _add_lazy(sub, "capacity", command)

    bench = sub.add_parser("bench", help="time the solver methods and print a table")
    bench.add_argument("--quick", action="store_true", help="small sizes only")
    bench.set_defaults(func=_cmd_bench)

    _add_lazy(sub, "experiment", command)
    return parser


# ----------------------------------------------------------------------------- entry point


class _NeverRaised(Exception):
    pass


def _sweep_error() -> type[Exception]:
    """The sweep engine's error class where that module is loaded (only it raises it)."""
    sweep = sys.modules.get("capalloc.experiments.sweep")
    return sweep.SweepError if sweep is not None else _NeverRaised


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]
        if " " not in text:
            text = f"key {text!r} not found"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``capalloc`` command with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 2 on bad input (a one-line ``capalloc: error: ...`` on
        stderr; argparse reports its own usage errors the same way).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        status = handler(args)
    except BrokenPipeError:  # e.g. `capalloc solve ... | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except (
        ValueError,
        TypeError,
        OSError,
        KeyError,
        ImportError,
        OverflowError,
        _sweep_error(),
    ) as exc:
        if os.environ.get("CAPALLOC_TRACEBACK"):
            raise
        print(f"capalloc: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # a size no check foresaw
        if os.environ.get("CAPALLOC_TRACEBACK"):
            raise
        print(f"capalloc: error: out of memory ({_one_line(exc)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("capalloc: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
