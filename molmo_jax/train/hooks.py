"""Work `trainer.train` does every few steps besides training: periodic evaluation and export.

    hooks = [EvalHook(500, lambda params: {"loss": held_out_loss(params)}),
             TaskEvalHook(500, {"synthetic_points": held_out_set}, cfg.model, tokenizer, f"{workdir}/eval"),
             ExportHook(1000, f"{workdir}/export_steps", cfg.model, tokenizer, formats=("orbax",))]
    trainer.train(cfg, data, workdir, hooks=hooks)

`Periodic` builds the last two from the command lines' flags (`python -m experiments.train --eval_every`,
`molmo-jax finetune --eval-every`, ...).

A hook runs after each step s with s % every == 0, on the model's params of the state after that step
(`Program.model_params`: LoRA adapters merged), inside the run's mesh context and before step s's checkpoint
is saved, on every process. The metrics it returns join step s's row of metrics.jsonl and TensorBoard. A run
killed during a hook resumes from an earlier checkpoint and runs it again; a run resumed from step s's
checkpoint does not.

On several processes (hosts) each hook runs on all of them alike, as its work is collective (the params are
sharded over every process's devices): `TaskEvalHook` generates on all and process 0 writes its files;
`ExportHook` writes through `io.save_formats`, where Orbax writes each process's shards, process 0 every
other file once (config.json last), and every process returns when the export is complete. Its directory
must be one every host sees (gs://, a shared file system).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol, Sequence

import jax
from etils import epath

from molmo_jax import io
from molmo_jax.api import MolmoBundle
from molmo_jax.eval import runner
from molmo_jax.eval.tasks import TASKS
from molmo_jax.preprocess import Preprocessor
from molmo_jax.tokenizer import MolmoTokenizer


class Hook(Protocol):
    every: int  # runs after the steps that are multiples of `every` (0: never)

    def __call__(self, step: int, params: Any) -> Mapping[str, float]:
        """Metrics to log at `step` ({} for none)."""


@dataclasses.dataclass(frozen=True)
class EvalHook:
    """Logs `evaluate(params)` ({name: number}) as "eval/<name>"."""
    every: int
    evaluate: Callable[[Any], Mapping[str, float]]

    def __call__(self, step: int, params: Any) -> dict[str, float]:
        return {f"eval/{name}": float(value) for name, value in self.evaluate(params).items()}


@dataclasses.dataclass(frozen=True)
class TaskEvalHook:
    """Answers and scores the first `examples` prompts of each eval task (`datasets`: {task name: dataset},
    `eval.runner.evaluate`), logged as "eval/<task>/<metric>"; predictions, results and pointing drawings
    go to <out_dir>/<step>/, written by process 0 (every process generates: the model is sharded over all)."""
    every: int
    datasets: Mapping[str, Any]
    model_cfg: Any
    tokenizer: MolmoTokenizer
    out_dir: epath.PathLike
    examples: int = 100

    def __call__(self, step: int, params: Any) -> dict[str, float]:
        bundle = MolmoBundle(self.model_cfg, params, self.tokenizer, Preprocessor(self.model_cfg, self.tokenizer))
        out_dir = epath.Path(self.out_dir) / str(step) if jax.process_index() == 0 else None
        metrics = {}
        for name, dataset in self.datasets.items():
            result = runner.evaluate(bundle, dataset, name, n=min(self.examples, len(dataset)), show=False,
                                     out_dir=out_dir)
            metrics.update({f"eval/{name}/{metric}": float(value) for metric, value in result["metrics"].items()})
        return metrics


@dataclasses.dataclass(frozen=True)
class ExportHook:
    """Writes the model (`io.save` with `model_cfg` and `tokenizer`) to <directory>/<step>/<format>."""
    every: int
    directory: epath.PathLike
    model_cfg: Any
    tokenizer: MolmoTokenizer
    formats: Sequence[str] = ("orbax",)

    def __call__(self, step: int, params: Any) -> dict[str, float]:
        io.save_formats(params, self.model_cfg, self.tokenizer, epath.Path(self.directory) / str(step), self.formats)
        return {}


@dataclasses.dataclass(frozen=True)
class Periodic:
    """Evaluation and export every few steps as the command lines set them (`experiments.train`'s
    --eval_every / --eval_task / --eval_examples / --eval_data_dir / --export_every, `molmo-jax finetune`'s
    --eval-every ...)."""
    eval_every: int = 0
    eval_tasks: Sequence[str] = ()
    eval_examples: int = 100
    eval_data_dir: str = ""
    export_every: int = 0

    def hooks(self, model_cfg, data_cfg, workdir: epath.PathLike, tokenizer: MolmoTokenizer | None,
              exports: Sequence[str]) -> list[Hook]:
        """A `TaskEvalHook` writing to <workdir>/eval and an `ExportHook` to <workdir>/export_steps, as set;
        the eval sets are opened now (eval_data_dir, default data_cfg.data_dir; PixMo-lite's held-out sets
        drawn as a pixmo_lite `data_cfg`), so a missing one fails before training starts."""
        if bool(self.eval_every) != bool(self.eval_tasks):
            raise ValueError("periodic evaluation needs both an interval (eval every N steps) and its tasks")
        if (self.eval_every or self.export_every) and tokenizer is None:
            raise ValueError("periodic evaluation and export need the run's tokenizer: set data.tokenizer")
        hooks = []
        if self.eval_every:
            unknown = sorted(set(self.eval_tasks) - set(TASKS))
            if unknown:
                raise ValueError(f"eval task {', '.join(unknown)}: unknown; known: {', '.join(sorted(TASKS))}")
            try:
                runner.prompt_formatter(model_cfg)
            except NotImplementedError as e:
                raise ValueError(f"periodic evaluation: this model cannot be evaluated: {e}") from e
            lite = data_cfg if data_cfg.kind == "pixmo_lite" else None
            data_dir = self.eval_data_dir or data_cfg.get("data_dir") or None
            datasets = {name: runner.open_dataset(TASKS[name], None, data_dir, lite_data=lite)
                        for name in self.eval_tasks}
            hooks.append(TaskEvalHook(self.eval_every, datasets, model_cfg, tokenizer, f"{workdir}/eval",
                                      self.eval_examples))
        if self.export_every:
            hooks.append(ExportHook(self.export_every, f"{workdir}/export_steps", model_cfg, tokenizer, exports))
        return hooks


def run(hooks: Sequence[Hook], step: int, state: dict, *, params_of: Callable[[dict], Any]) -> dict[str, float]:
    """The metrics of the hooks due after `step`; the params (`params_of(state)`) are computed once, and only
    when a hook is due."""
    due = [hook for hook in hooks if hook.every and step % hook.every == 0]
    if not due:
        return {}
    params = params_of(state)
    return {name: value for hook in due for name, value in hook(step, params).items()}
