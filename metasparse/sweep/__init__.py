"""``metasparse sweep``: the group-sparse head's λ1/λ_max settings side by side.

Two modes, one results folder each: ``--checkpoint`` re-solves the head at every ratio on one
trained backbone (:mod:`.backbone`); ``--config`` meta-trains one run per ratio and seed, resumably,
and tests each (:mod:`.runs`). Every setting is measured on the same seeded episodes, with
trustworthy sparsity statistics (:mod:`.measure`), and written up by :mod:`.report`.
"""

from __future__ import annotations

from metasparse.sweep.backbone import measure_heads, run_sweep
from metasparse.sweep.cli import add_parser
from metasparse.sweep.measure import Measured, paired_differences, settings
from metasparse.sweep.report import CSV_FIELDS, write_all
from metasparse.sweep.runs import run_config_sweep

__all__ = [
    "CSV_FIELDS",
    "Measured",
    "add_parser",
    "measure_heads",
    "paired_differences",
    "run_config_sweep",
    "run_sweep",
    "settings",
    "write_all",
]
