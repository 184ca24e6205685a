"""The eval tasks: which data, split, scorer and official inference settings each benchmark uses.

Settings follow the official evaluation (`launch_scripts/eval_downstream.py`, `launch_scripts/utils.py:
get_evaluation`): greedy decoding; 12 new tokens, 192 for pointing / counting, 16 for AndroidControl;
"high-res" (`--high_res`: 36 crops) for the document, chart and VQA sets, "low-res" (12 crops, the
released checkpoints' own) for counting, pointing and AndroidControl. The prompt style is the dataset
reader's (`data_pipelines.eval_sets`), formatted by the model's `Formatter(for_inference=True)`.

    name            data (eval_sets.load)           split       scorer (metrics.score)  tokens crops headline
    ai2d            ai2_diagram_v2_mix_transparent  test        ai2_diagram             12     36   mc_ai2d_transparent
    chart_qa        chart_qa                        test        chart_qa                12     36   relaxed_correctness
    vqa_v2          coco_2014_vqa_multi             validation  coco_2014_vqa           12     36   vqa_score
    doc_qa          doc_qa                          validation  doc_qa                  12     36   anls
    info_qa         info_qa                         validation  info_qa                 12     36   anls
    text_vqa        text_vqa                        validation  text_vqa                12     36   vqa_score
    real_world_qa   real_world_qa                   test        real_world_qa           12     36   real_world_qa_score
    mmmu            mmmu                            validation  mmmu                    12     36   mmmu_score
    math_vista      math_vista                      testmini    math_vista              12     36   math_vista_score
    countbench_qa   countbench_qa                   test        countbench_qa           192    12   correct
    pixmo_count     pixmo_count_counting            test        pixmo_count             192    12   correct
    pointing_eval   pixmo_points_eval               test        pointing_eval           192    12   f1
    android_control android_control_ll              validation  android_control         16     12   accuracy
and the validation splits of the other academic training sets (okvqa, a_okvqa_mc / _da, science_qa,
tab_mwp, st_qa, tally_qa (test: it has no validation split), dv_qa, figure_qa, plot_qa; high-res, 12
tokens). VQA v2, DocVQA and InfographicVQA are scored by their test servers in the paper: `--split test`
writes the server's submission file (`submission`) instead of scores.

Decisions where the official settings are a slip (override with flags): PixMo-Count gets 192 tokens, not
the official 12 (`get_evaluation` gives 192 only to names containing "countbench_qa"; a point_count answer
does not fit 12 tokens); the tasks with no official scorer (TabMWP, DVQA, FigureQA, PlotQA) use exact match.
"""
from __future__ import annotations

import dataclasses

KINDS = ("short_answer", "clock", "counting", "pointing", "fields")
HIGH_RES, LOW_RES = 36, 12  # max crops of the official "high-res" / "low-res" evaluation


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """How to read and score a dataset.

    kind: how the scorer's reference is built (one of KINDS; "fields" = the example's official metadata
      and answer fields, as the official evaluators read them); benchmark: the `metrics.score` name;
    max_new_tokens: answer budget; dataset: the `eval_sets.load` name (None: a held-out PixMo-lite set);
    split / splits: default and allowed splits; max_crops: crops at evaluation (None: the checkpoint's);
    headline: the metric of the paper's table; submission: test-server format of the test split.
    """
    name: str
    kind: str
    benchmark: str
    max_new_tokens: int
    dataset: str | None = None
    split: str = "validation"
    splits: tuple[str, ...] = ()
    max_crops: int | None = None
    headline: str | None = None
    submission: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"EvalTask.kind={self.kind!r}; allowed {KINDS}")


def _academic(name, dataset, benchmark, headline, split="validation", splits=("validation", "test"), **kw):
    return EvalTask(name, "fields", benchmark, 12, dataset, split, splits, HIGH_RES, headline, **kw)


SYNTHETIC = (
    EvalTask("synthetic_clocks", "clock", "clocks", 12),
    EvalTask("synthetic_cap_qa", "short_answer", "tally_qa", 12),
    EvalTask("synthetic_docs_charts", "short_answer", "chart_qa", 12),
    EvalTask("synthetic_docs_tables", "short_answer", "doc_qa", 12),
    EvalTask("synthetic_count", "counting", "pixmo_count", 192),
    EvalTask("synthetic_points_counting", "counting", "pixmo_count", 192),
    EvalTask("synthetic_points", "pointing", "pointing_eval", 192),
)
# The 11 benchmarks of the paper's table, in its column order.
PAPER = (
    _academic("ai2d", "ai2_diagram_v2_mix_transparent", "ai2_diagram", "mc_ai2d_transparent", "test"),
    _academic("chart_qa", "chart_qa", "chart_qa", "relaxed_correctness", "test"),
    _academic("vqa_v2", "coco_2014_vqa_multi", "coco_2014_vqa", "vqa_score", submission="vqa_v2"),
    _academic("doc_qa", "doc_qa", "doc_qa", "anls", submission="docvqa"),
    _academic("info_qa", "info_qa", "info_qa", "anls", submission="docvqa"),
    _academic("text_vqa", "text_vqa", "text_vqa", "vqa_score"),
    _academic("real_world_qa", "real_world_qa", "real_world_qa", "real_world_qa_score", "test", ("test",)),
    _academic("mmmu", "mmmu", "mmmu", "mmmu_score", splits=("validation", "dev", "test")),
    _academic("math_vista", "math_vista", "math_vista", "math_vista_score", "testmini", ("testmini", "test")),
    EvalTask("countbench_qa", "counting", "countbench_qa", 192, "countbench_qa", "test", ("test",), LOW_RES,
             "correct"),
    EvalTask("pixmo_count", "counting", "pixmo_count", 192, "pixmo_count_counting", "test",
             ("validation", "test"), LOW_RES, "correct"),
)
OTHER = (
    EvalTask("pointing_eval", "pointing", "pointing_eval", 192, "pixmo_points_eval", "test", ("test",), LOW_RES,
             "f1"),
    EvalTask("android_control", "fields", "android_control", 16, "android_control_ll", "validation",
             ("validation", "test"), LOW_RES, "accuracy"),
    _academic("okvqa", "okvqa", "okvqa", "vqa_score", splits=("validation",)),
    _academic("a_okvqa_mc", "a_okvqa_mc", "a_okvqa_mc", "mc"),
    _academic("a_okvqa_da", "a_okvqa_da", "a_okvqa_da", "a_okvqa_score"),
    _academic("science_qa", "science_qa_img", "science_qa_img", "mc"),
    _academic("tab_mwp", "tabwmp_da", "tally_qa", "em"),
    _academic("st_qa", "st_qa", "st_qa", "anls"),
    _academic("tally_qa", "tally_qa", "tally_qa", "em", "test", ("test",)),
    _academic("dv_qa", "dv_qa", "tally_qa", "em", "val_easy", ("val_easy", "val_hard")),
    _academic("figure_qa", "figure_qa", "tally_qa", "em", splits=("validation", "validation2")),
    _academic("plot_qa", "plot_qa", "tally_qa", "em"),
)
TASKS: dict[str, EvalTask] = {t.name: t for t in SYNTHETIC + PAPER + OTHER}
PAPER_TASKS = tuple(t.name for t in PAPER)

# Molmo's published averages over the 11 (paper Table 1), for the paper table's reference rows.
PAPER_AVERAGES = {"Molmo-72B": 81.2, "Molmo-7B-D": 77.3, "MolmoE-1B": 68.6}


def resolve_task(task: str | EvalTask) -> EvalTask:
    """`task` itself or the `TASKS` entry of that name."""
    if isinstance(task, EvalTask):
        return task
    if task not in TASKS:
        raise KeyError(f"unknown eval task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task]
