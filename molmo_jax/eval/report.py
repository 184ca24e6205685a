"""The paper's results table: one row per checkpoint, the headline metric (in %) of each of the 11
benchmarks (`tasks.PAPER_TASKS`) and their average, written as markdown, JSON and a PNG bar chart.

    rows = paper_rows({"Molmo-7B-D": {"ai2d": result, ...}})   # results of `runner.evaluate`
    write_paper(rows, "out/")                                  # paper.md, paper.json, paper.png
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from etils import epath

from molmo_jax.eval.tasks import PAPER_AVERAGES, PAPER_TASKS, TASKS

AVERAGE = "average"


def paper_rows(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """checkpoint -> task -> evaluate result  ->  [{"checkpoint", <task>: headline x 100, "average"}].

    The average is over the 11 and is None unless every one has a score."""
    rows = []
    for checkpoint, by_task in results.items():
        row = {"checkpoint": checkpoint}
        for name in PAPER_TASKS:
            metrics = by_task[name]["metrics"] if name in by_task else {}
            headline = TASKS[name].headline
            row[name] = 100 * metrics[headline] if headline in metrics else None
        scores = [row[name] for name in PAPER_TASKS]
        row[AVERAGE] = None if None in scores else sum(scores) / len(scores)
        rows.append(row)
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table in the paper's column order, the published averages as a footnote."""
    columns = [*PAPER_TASKS, AVERAGE]
    lines = ["| checkpoint | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([row["checkpoint"], *(_cell(row[c]) for c in columns)]) + " |" for row in rows]
    published = ", ".join(f"{k} {v}" for k, v in PAPER_AVERAGES.items())
    lines += ["", f"Headline metrics: {', '.join(f'{n} {TASKS[n].headline}' for n in PAPER_TASKS)}. "
              "VQA v2, DocVQA and InfographicVQA on their validation splits (the paper: test servers). "
              f"Published 11-averages: {published}."]
    return "\n".join(lines) + "\n"


def bar_chart(rows: Sequence[Mapping[str, Any]], path: epath.Path):
    """Grouped bars: one group per benchmark (and the average), one bar per checkpoint."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*PAPER_TASKS, AVERAGE]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(12, 4))
    for k, row in enumerate(rows):
        ax.bar([i + k * width for i in range(len(columns))], [row[c] or 0.0 for c in columns], width,
               label=row["checkpoint"])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))], columns, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_paper(rows: Sequence[Mapping[str, Any]], out_dir) -> list[str]:
    """Writes `out_dir/paper.md`, `paper.json` and `paper.png`; returns their paths."""
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "paper.md", out_dir / "paper.json", out_dir / "paper.png"]
    paths[0].write_text(markdown(rows))
    paths[1].write_text(json.dumps(list(rows), indent=1))
    bar_chart(rows, paths[2])
    return [str(p) for p in paths]
