"""Fine-tuning a checkpoint on your own data: every weight, some components frozen, or LoRA adapters.

    cfg = recipes.finetune.get_config("Molmo-7B-D-0924/", lora_rank=8, steps=1000)
    cfg.data.path = "my_data.jsonl"                   # data_pipelines.user_data format
    state, exports = finetune.run(cfg, "runs/ft", factory.make_data)   # {"hf_release": dir, "orbax": dir}

Same machinery as stage 2 (`trainer.train`: per-component AdamW, checkpoints with exact resume, metrics)
with a train state that keeps what is not trained out of the optimizer:
  params     the trainable tree: the params of the components not in `cfg.freeze` and, with LoRA, the
             adapters `<module>/lora_a|lora_b` (paths mirror the model, so `optim` groups them by component)
  frozen     the params of the frozen components, passed through every step untouched
  opt_state, step, rng   as in `trainer`
The loss sees `assemble(frozen, params)`: both trees joined and the adapters merged into their kernels
(`lora.apply_lora`), so only trainable leaves get gradients and optimizer moments. With LoRA all three
components are frozen by default; removing one from `cfg.freeze` trains it fully next to the adapters.

The recipe is `molmo_jax.recipes.finetune`; the batches come from the `make_data(cfg, tokenizer)` given to
`run` (`data_pipelines.factory.make_data`: the user JSONL mixed with PixMo-lite). A run that completes
exports (`cfg.export`) to <workdir>/export/<format> with the checkpoint's own model config and tokenizer
(`io.export_run`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
from etils import epath
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from molmo_jax import io, lora, sharding
from molmo_jax.models.molmo import Molmo, abstract_params
from molmo_jax.train import optim, trainer

# ------------------------------------------------------------------------------------------ the param trees


def lora_config(cfg) -> lora.LoraConfig | None:
    return lora.LoraConfig.from_config(cfg.lora) if cfg.lora.rank else None


def _flat(tree) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _tree(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def partition(params, freeze) -> tuple[dict, dict]:
    """(trainable, frozen): the params of the components not in / in `freeze` (boxed or not)."""
    unknown = set(freeze) - set(optim.COMPONENTS)
    if unknown:
        raise ValueError(f"cannot freeze {sorted(unknown)}: components are {optim.COMPONENTS}")
    flat = _flat(params)
    frozen = {k: v for k, v in flat.items() if optim.component_of(k) in freeze}
    return _tree({k: v for k, v in flat.items() if k not in frozen}), _tree(frozen)


def _base_and_adapters(frozen, trainable) -> tuple[dict, dict]:
    """(full param tree, LoRA adapter tree) of a train state's two trees."""
    flat = _flat(trainable)
    adapters = {k: v for k, v in flat.items() if k.rsplit("/", 1)[-1] in lora.LORA_LEAVES}
    base = {**_flat(frozen), **{k: v for k, v in flat.items() if k not in adapters}}
    return _tree(base), _tree(adapters)


def assemble(frozen, trainable, lcfg: lora.LoraConfig | None) -> dict:
    """The model's params: both trees joined, adapters merged into their kernels (traceable)."""
    base, adapters = _base_and_adapters(frozen, trainable)
    return lora.apply_lora(base, adapters, lcfg) if adapters else base


def trained_params(state: Mapping[str, Any], cfg) -> dict:
    """The model's params of a train state, as device arrays in the base shardings (adapters merged)."""
    base, adapters = _base_and_adapters(state["frozen"], state["params"])
    return lora.merge(base, adapters, lora_config(cfg)) if adapters else base


def abstract_trees(cfg) -> tuple[Any, Any]:
    """(trainable, frozen) as boxed ShapeDtypeStructs; checks that LoRA adapts only frozen components."""
    trainable, frozen = partition(abstract_params(cfg.model), cfg.freeze)
    lcfg = lora_config(cfg)
    if lcfg is None:
        return trainable, frozen
    adapters = lora.abstract(cfg.model, lcfg)
    trained = sorted({p for p in _flat(adapters) if optim.component_of(p) not in cfg.freeze})
    if trained:
        raise ValueError(f"LoRA adapts {trained} of components that are trained fully; add them to freeze")
    return _tree({**_flat(trainable), **_flat(adapters)}), frozen


# ------------------------------------------------------------------------------------------ the program


@dataclasses.dataclass(frozen=True)
class AssembledModel:
    """A Molmo whose `apply` takes the trainable tree and assembles the full params from it (what
    `trainer.loss_and_grads` differentiates) and the frozen tree."""
    model: Molmo
    frozen: Any
    lcfg: lora.LoraConfig | None

    def apply(self, variables, *args, **kwargs):
        return self.model.apply({"params": assemble(self.frozen, variables["params"], self.lcfg)}, *args, **kwargs)


def _new_state(trainable, frozen, opt: optim.Optimizer, rng) -> dict:
    return {**trainer.new_state(trainable, opt, rng), "frozen": frozen}


def abstract_state(cfg, opt: optim.Optimizer, mesh: Mesh) -> dict:
    """The fine-tuning train state as ShapeDtypeStructs carrying their shardings on `mesh`."""
    boxed_trainable, boxed_frozen = abstract_trees(cfg)
    param_sh = {name: sharding.param_shardings(tree, mesh) for name, tree in
                (("params", boxed_trainable), ("frozen", boxed_frozen))}
    shapes = jax.eval_shape(lambda t, f: _new_state(t, f, opt, jax.random.PRNGKey(0)),
                            nn.meta.unbox(boxed_trainable), nn.meta.unbox(boxed_frozen))
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = {**param_sh, "opt_state": trainer.like_params(shapes["opt_state"], param_sh["params"], replicated),
                 "step": replicated, "rng": replicated}
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def initial_state(cfg, opt: optim.Optimizer, mesh: Mesh, target: dict) -> dict:
    """The checkpoint's params split into trainable / frozen, fresh adapters, a fresh optimizer."""
    lora_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    trainable, frozen = partition(io.load_params(cfg.init_from, cfg.model, mesh), cfg.freeze)
    lcfg = lora_config(cfg)
    if lcfg is not None:
        trainable = _tree({**_flat(trainable), **_flat(lora.init(lora_rng, cfg.model, lcfg, mesh))})
    make = jax.jit(lambda t, f, r: _new_state(t, f, opt, r), out_shardings=trainer.shardings_of(target),
                   donate_argnums=(0, 1))
    return make(trainable, frozen, jax.device_put(dropout_rng, target["rng"].sharding))


def _step(state, batch, *, model: Molmo, opt: optim.Optimizer, lcfg, z_loss: float, grad_accum: int):
    assembled = AssembledModel(model, state["frozen"], lcfg)
    return trainer.train_step(state, batch, model=assembled, opt=opt, z_loss=z_loss, grad_accum=grad_accum)


def program(cfg, mesh: Mesh) -> trainer.Program:
    """The `trainer.train` program of a fine-tuning config."""
    opt = optim.make(cfg.optim)
    target = abstract_state(cfg, opt, mesh)
    step = functools.partial(_step, model=Molmo(cfg.model, deterministic=False), opt=opt, lcfg=lora_config(cfg),
                             z_loss=cfg.optim.z_loss, grad_accum=cfg.optim.grad_accum)
    return trainer.Program(target, functools.partial(initial_state, cfg, opt, mesh, target), step)


# ------------------------------------------------------------------------------------------ data and run


def run(cfg, workdir: epath.PathLike, make_data: Callable[[Any, Any], Iterator],
        mesh: Mesh | None = None) -> tuple[dict, dict[str, epath.Path]]:
    """Fine-tunes on the batches `make_data(cfg, tokenizer)` (resuming from `workdir`) and exports to
    workdir/export/<format>; a run stopped by a signal raises `trainer.TrainingStopped` and exports nothing.

    Returns (final train state, {format: export directory}).
    """
    mesh = mesh or trainer.make_mesh(cfg.mesh)
    model_cfg = io.load_config(cfg.init_from)  # the checkpoint's own config (cfg.model: training dtype, dropout)
    tokenizer = io.load_tokenizer(cfg.init_from, model_cfg)
    io.save_run_files(workdir, model_cfg, tokenizer)
    state = trainer.train(cfg, make_data(cfg, tokenizer), workdir, mesh, program(cfg, mesh))
    return state, io.export_run(workdir, trained_params(state, cfg), model_cfg, tokenizer, cfg.export)
