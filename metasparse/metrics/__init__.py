"""Metrics that compare learned representations with ground-truth factors."""

from __future__ import annotations

from metasparse.metrics.disentanglement import (
    DCIScores,
    MCCResult,
    correlation_matrix,
    dci,
    mcc,
    mcc_matching,
)

__all__ = ["DCIScores", "MCCResult", "correlation_matrix", "dci", "mcc", "mcc_matching"]
