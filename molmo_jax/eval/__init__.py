"""Benchmark scoring reproducing the official Molmo evaluation (olmo/eval); see `metrics.score`."""
from molmo_jax.eval.elo import elo_ratings
from molmo_jax.eval.metrics import BENCHMARKS, ScoringOptions, score

__all__ = ["BENCHMARKS", "ScoringOptions", "elo_ratings", "score"]
