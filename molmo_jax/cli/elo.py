"""`molmo-jax elo`: Elo / Bradley-Terry ratings with bootstrap intervals (`molmo_jax.eval.elo`).

    molmo-jax elo --preferences prefs.jsonl --bootstrap 1000 --out ratings.json
"""
from __future__ import annotations

import argparse
import json

from etils import epath

HELP = "Elo / Bradley-Terry ratings from pairwise preference judgements"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--preferences", required=True, type=epath.Path,
                        help="pairwise preferences, .jsonl or .csv with model_a, model_b, winner "
                             "(model_a / model_b / tie...)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=epath.Path, help="write the ratings as JSON here")


def run(args: argparse.Namespace) -> int:
    from molmo_jax.eval import elo
    model_a, model_b, outcome = elo.read_preferences(args.preferences)
    ratings = elo.elo_ratings(model_a, model_b, outcome, n_bootstrap=args.bootstrap, seed=args.seed)
    width = max(len(m) for m in ratings)
    print(f"{'model':<{width}}  rating  95% interval  ({len(outcome)} comparisons)")
    for model, r in ratings.items():
        print(f"{model:<{width}}  {r['rating']:6.1f}  [{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
    if args.out:
        args.out.write_text(json.dumps(ratings, indent=1))
    return 0
