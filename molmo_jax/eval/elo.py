"""Elo ratings from pairwise human preferences via a Bradley-Terry model (the paper's human
preference evaluation; its scoring code is not released).

P(i beats j) = sigmoid(theta_i - theta_j). Strengths are fit by maximum likelihood, a tie counting as
half a win for each side, with a negligible ridge (`l2`) that centres them and keeps an undefeated
model finite. Ratings are reported on the Elo scale, `base + 400 * log10(e) * theta`, so a 400 point
gap means 10:1 odds. Confidence intervals come from a seeded bootstrap over comparisons (a model
missing from a resample gets the base rating there).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Sequence

import numpy as np
from etils import epath
from scipy.optimize import minimize
from scipy.special import expit

ELO_SCALE = 400.0
ELO_BASE = 1000.0


def win_matrix(a_idx: np.ndarray, b_idx: np.ndarray, outcome: np.ndarray, n_models: int) -> np.ndarray:
    """float[n, n]: W[i, j] = points i scored against j (outcome = score of model a: 1, 0.5 or 0)."""
    wins = np.zeros((n_models, n_models))
    np.add.at(wins, (a_idx, b_idx), outcome)
    np.add.at(wins, (b_idx, a_idx), 1.0 - outcome)
    return wins


def _neg_log_likelihood(theta: np.ndarray, wins: np.ndarray, l2: float):
    """Ridge-penalised negative log-likelihood and its gradient."""
    diff = theta[:, None] - theta[None, :]
    games = wins + wins.T
    nll = np.sum(wins * np.logaddexp(0.0, -diff)) + 0.5 * l2 * theta @ theta
    p_win = expit(diff)
    grad = -(wins - games * p_win).sum(axis=1) + l2 * theta
    return nll, grad


def _hessian(theta: np.ndarray, wins: np.ndarray, l2: float) -> np.ndarray:
    p_win = expit(theta[:, None] - theta[None, :])
    weights = (wins + wins.T) * p_win * (1.0 - p_win)
    return np.diag(weights.sum(axis=1) + l2) - weights


def fit_bradley_terry(wins: np.ndarray, l2: float = 1e-6, theta0: np.ndarray | None = None) -> np.ndarray:
    """Bradley-Terry strengths (natural log-odds units, summing to 0) maximising the likelihood."""
    theta0 = np.zeros(len(wins)) if theta0 is None else theta0
    result = minimize(_neg_log_likelihood, theta0, args=(wins, l2), jac=True, hess=_hessian,
                      method="trust-exact", options=dict(gtol=1e-9))
    return result.x


def to_elo(theta: np.ndarray) -> np.ndarray:
    """Bradley-Terry strengths on the Elo scale."""
    return ELO_BASE + ELO_SCALE / np.log(10.0) * theta


def _bootstrap(a_idx, b_idx, outcome, n_models, n_bootstrap, seed, l2, theta0) -> np.ndarray:
    """float[n_bootstrap, n_models] strengths refit on comparisons resampled with replacement."""
    rng = np.random.default_rng(seed)
    samples = np.zeros((n_bootstrap, n_models))
    for k in range(n_bootstrap):
        s = rng.integers(0, len(outcome), len(outcome))
        samples[k] = fit_bradley_terry(win_matrix(a_idx[s], b_idx[s], outcome[s], n_models), l2, theta0)
    return samples


def _percentile_interval(samples: np.ndarray, confidence: float, n_models: int):
    """(low, high) per model; NaN without samples."""
    if len(samples) == 0:
        return np.full(n_models, np.nan), np.full(n_models, np.nan)
    tail = 50.0 * (1.0 - confidence)
    return np.percentile(samples, [tail, 100.0 - tail], axis=0)


def elo_ratings(model_a: Sequence[str], model_b: Sequence[str], outcome: Sequence[float], *,
                n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
                l2: float = 1e-6) -> dict[str, dict[str, float]]:
    """{model: {rating, ci_low, ci_high}}, best first.

    model_a / model_b: the two models of each comparison; outcome: the score of model_a (1 = a
    preferred, 0 = b preferred, 0.5 = tie). CI: percentile bootstrap at `confidence`, seeded.
    """
    if not len(model_a) == len(model_b) == len(outcome):
        raise ValueError(f"{len(model_a)} / {len(model_b)} models for {len(outcome)} outcomes")
    models, idx = np.unique(np.concatenate([model_a, model_b]), return_inverse=True)
    a_idx, b_idx = np.split(idx, 2)
    outcome = np.asarray(outcome, np.float64)
    theta = fit_bradley_terry(win_matrix(a_idx, b_idx, outcome, len(models)), l2)

    samples = _bootstrap(a_idx, b_idx, outcome, len(models), n_bootstrap, seed, l2, theta)
    low, high = _percentile_interval(to_elo(samples), confidence, len(models))
    ratings = to_elo(theta)
    order = np.argsort(-ratings, kind="stable")
    return {str(models[i]): dict(rating=float(ratings[i]), ci_low=float(low[i]), ci_high=float(high[i]))
            for i in order}


WINNER_OUTCOMES = {"model_a": 1.0, "a": 1.0, "model_b": 0.0, "b": 0.0}  # any "tie..." scores 0.5


def read_preferences(path) -> tuple[list[str], list[str], list[float]]:
    """(model_a, model_b, outcome) of a preference file: JSON lines or CSV with columns model_a, model_b,
    winner ("model_a" / "a", "model_b" / "b", or "tie", "tie (bothbad)" as in the Chatbot Arena dumps)."""
    path = epath.Path(path)  # local or gs://
    with io.StringIO(path.read_text(), newline="") as f:
        rows = list(csv.DictReader(f)) if path.suffix == ".csv" else [json.loads(line) for line in f if line.strip()]
    model_a, model_b, outcome = [], [], []
    for k, row in enumerate(rows, start=1):
        missing = [c for c in ("model_a", "model_b", "winner") if c not in row]
        if missing:
            raise ValueError(f"{path}: row {k} lacks {missing}")
        winner = str(row["winner"]).strip().lower()
        if winner not in WINNER_OUTCOMES and not winner.startswith("tie"):
            raise ValueError(f"{path}: row {k}: winner {row['winner']!r} is not model_a, model_b or tie")
        model_a.append(str(row["model_a"]))
        model_b.append(str(row["model_b"]))
        outcome.append(WINNER_OUTCOMES.get(winner, 0.5))
    if not outcome:
        raise ValueError(f"{path}: no comparisons")
    return model_a, model_b, outcome
