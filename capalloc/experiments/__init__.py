"""The reproduction experiments (``reproductions``), the sweep engine they run on
(``sweep``) and the solver benchmark (``bench``)."""

from capalloc.experiments.reproductions import (
    DEFAULT_SPARSITIES,
    EXACT_MODEL,
    MODELS,
    PhaseDiagram,
    block_size_table,
    exact_sparsity_curve,
    phase_diagram,
    plot_block_sizes,
    plot_phase_diagram,
    plot_sparsity_sweep,
    sparsity_point,
    sparsity_sweep,
    train_phase_points,
)

__all__ = [
    "MODELS",
    "DEFAULT_SPARSITIES",
    "EXACT_MODEL",
    "PhaseDiagram",
    "block_size_table",
    "exact_sparsity_curve",
    "phase_diagram",
    "plot_block_sizes",
    "plot_phase_diagram",
    "plot_sparsity_sweep",
    "sparsity_point",
    "sparsity_sweep",
    "train_phase_points",
]
