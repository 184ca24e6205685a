"""Answering eval prompts in batches, streaming the answers to a resumable JSON-lines file, and the test
servers' result files.

`<out_dir>/<task>.predictions.jsonl`: a settings line {"settings": {...}} (checkpoint, task, split, examples,
seed, max_new_tokens, max_crops), then one line per answered prompt {"example", "prompt", "prediction",
"points"}, appended and flushed as each batch finishes. A resumed run checks the settings and each stored
prompt against the data, keeps those answers and asks the model only for the rest.
"""
from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from etils import epath
from tqdm import tqdm

from molmo_jax import paths
from molmo_jax.api import Prediction
from molmo_jax.eval.tasks import EvalTask
from molmo_jax.eval.vqa import extract_short_answer

PREDICTIONS_SUFFIX = ".predictions.jsonl"  # out_dir/<task>.predictions.jsonl

if TYPE_CHECKING:
    from molmo_jax.eval.runner import EvalItem


def _chunks(items: Iterable[EvalItem], size: int) -> Iterator[list[EvalItem]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def answer_items(bundle, items: Iterable[EvalItem], batch_size: int, max_new_tokens: int):
    """(item, Prediction) pairs, `batch_size` prompts per `predict_batch` call. A short last batch after
    full ones, and every short batch of a bundle on a mesh (whose batch is split over its devices), is
    padded with copies of its last item to `batch_size` (reusing the compiled program of the full ones)."""
    padded = getattr(bundle, "mesh", None) is not None
    for batch in _chunks(items, batch_size):
        run = batch + batch[-1:] * (batch_size - len(batch)) if padded else batch
        padded = True
        predictions = bundle.predict_batch([it.image for it in run], [it.prompt for it in run],
                                           max_new_tokens=max_new_tokens)
        yield from zip(batch, predictions)


def predictions_file(out_dir, task: str) -> epath.Path:
    return epath.Path(out_dir) / f"{task}{PREDICTIONS_SUFFIX}"


def resume_predictions(path: epath.Path, settings: Mapping[str, Any], resume: bool = True) -> list[dict[str, Any]]:
    """The records already in `path` after its settings line, which must equal `settings`; a torn last line
    (a run killed while writing) is cut off. A new file (any file, without `resume`) gets the settings line."""
    settings = json.loads(json.dumps(settings))
    if not path.exists() or not resume:
        path.write_text(json.dumps({"settings": settings}) + "\n")
        return []
    lines = path.read_text().splitlines()
    head = json.loads(lines[0]) if lines else {}
    if head.get("settings") != settings:
        raise ValueError(f"{path} holds a run with other settings ({head.get('settings')}, now {settings}); "
                         "use another --out or delete the file")
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if len(records) < len(lines) - 1:
        path.write_text("".join(json.dumps(r) + "\n" for r in [head, *records]))
    return records


def _record(item: EvalItem, prediction) -> dict[str, Any]:
    return dict(example=item.example, prompt=item.prompt, prediction=prediction.text,
                points=np.asarray(prediction.points).tolist())


def _stored(records: Sequence[Mapping[str, Any]], items: Iterator[EvalItem], path: epath.Path):
    """(item, Prediction) of the prompts answered before, checked against the items read now."""
    for k, (record, item) in enumerate(zip(records, items)):
        if (record["example"], record["prompt"]) != (item.example, item.prompt):
            raise ValueError(f"{path}: prompt {k} was {record['prompt']!r} of example {record['example']}, the "
                             f"data now gives {item.prompt!r} of example {item.example}; use another --out")
        yield item, Prediction(record["prediction"], np.asarray(record["points"], np.float64).reshape(-1, 2))


def answer_all(bundle, items: Iterator[EvalItem], batch_size: int, max_new_tokens: int, path: epath.Path | None,
               settings: Mapping[str, Any], desc: str, resume: bool = True) -> list:
    """(item, Prediction) of every item: those stored in `path` first (with `resume`), then new answers,
    each appended to `path` as its batch finishes (a gs:// file: rewritten at most every
    `paths.REWRITE_INTERVAL_S` and at the end)."""
    records = resume_predictions(path, settings, resume) if path is not None else []
    answered = list(_stored(records, items, path))
    if records and len(answered) < len(records):
        raise ValueError(f"{path} holds {len(records)} answers, more than the {len(answered)} prompts of this run")
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(contextlib.closing(paths.AppendFile(path))) if path is not None else None
        for item, prediction in tqdm(answer_items(bundle, items, batch_size, max_new_tokens), desc=desc,
                                     unit="prompt", disable=None, leave=False, initial=len(answered)):
            answered.append((item, prediction))
            if log is not None:
                log.write((json.dumps(_record(item, prediction)) + "\n").encode())
                log.flush()
    return answered


SUBMISSION_ID_KEYS = {"vqa_v2": "question_id", "docvqa": "questionId"}  # the servers' result-file id field


def submission(task: EvalTask, answered: Sequence) -> list[dict[str, Any]]:
    """The test server's results: [{<id key>: question id, "answer": the short answer `VqaEval` scores}]."""
    key = SUBMISSION_ID_KEYS[task.submission]
    out = []
    for item, prediction in answered:
        if item.question_id is None:
            raise ValueError(f"{task.name}: prompt of example {item.example} has no question_id for the submission")
        qid = int(item.question_id) if item.question_id.isdigit() else item.question_id
        out.append({key: qid, "answer": extract_short_answer(prediction.text)})
    return out


def write_submission(task: EvalTask, answered: Sequence, out_dir: epath.Path) -> str:
    path = out_dir / f"{task.name}_test_submission.json"
    path.write_text(json.dumps(submission(task, answered)))
    return str(path)
