"""Fine-tuning a checkpoint on your own data: every weight, some components frozen, or LoRA adapters.

    cfg = finetune.get_config("Molmo-7B-D-0924/", lora_rank=8, steps=1000)
    cfg.data.path = "my_data.jsonl"                   # data_pipelines.user_data format
    state, exports = finetune.run(cfg, "runs/ft")     # exports: {"hf_release": dir, "orbax": dir}

Same machinery as stage 2 (`trainer.train`: per-component AdamW, checkpoints with exact resume, metrics)
with a train state that keeps what is not trained out of the optimizer:
  params     the trainable tree: the params of the components not in `cfg.freeze` and, with LoRA, the
             adapters `<module>/lora_a|lora_b` (paths mirror the model, so `optim` groups them by component)
  frozen     the params of the frozen components, passed through every step untouched
  opt_state, step, rng   as in `trainer`
The loss sees `assemble(frozen, params)`: both trees joined and the adapters merged into their kernels
(`lora.apply_lora`), so only trainable leaves get gradients and optimizer moments. With LoRA all three
components are frozen by default; removing one from `cfg.freeze` trains it fully next to the adapters.

Data: the user JSONL mixed with PixMo-lite (`data_pipelines.synthetic`, its tasks at their stage-2 mixture
rates) at rate `data.mix_pixmo_lite`, through the stage-2 grain pipeline, formatted as the checkpoint's
config says. A run that completes exports (`cfg.export`) to <workdir>/export/<format> with the checkpoint's
own model config and tokenizer (`io.export_run`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import ml_collections
from etils import epath
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipelines import mixtures, synthetic, user_data
from molmo_jax import io, lora, sharding
from molmo_jax.models.molmo import Molmo, abstract_params
from molmo_jax.train import optim, trainer

EXPORT_FORMATS = ("hf_release", "orbax")


def _per_component(value) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({c: value for c in optim.COMPONENTS})


def default_checkpoint_every(steps: int) -> int:
    """Ten checkpoints a run, at most 100 steps apart: a crash loses little of a short run."""
    return max(1, min(100, steps // 10))


def get_config(checkpoint: str, lora_rank: int = 0, steps: int = 1000) -> ml_collections.ConfigDict:
    """Fine-tuning recipe for the checkpoint directory `checkpoint` (any `io.FORMATS`).

    Full fine-tuning uses the stage-2 learning rates (connector / vit 5e-6, llm 1e-5); LoRA (lora_rank > 0)
    freezes every component and trains the adapters at 2e-4. Warm-up: 10% of the steps. Set data.path.
    """
    c = ml_collections.ConfigDict()
    c.init_from = checkpoint
    c.model = io.load_config(checkpoint)
    c.model.dtype = "bfloat16"  # float32 master params (param_dtype)
    c.model.llm.residual_dropout = 0.1  # stage 2
    c.freeze = tuple(optim.COMPONENTS) if lora_rank else ()
    c.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=16.0, targets=lora.DEFAULT_TARGETS))

    o = c.optim = ml_collections.ConfigDict()
    o.steps = steps
    o.lr = _per_component(2e-4) if lora_rank else ml_collections.ConfigDict(dict(connector=5e-6, vit=5e-6, llm=1e-5))
    o.warmup = _per_component(max(1, steps // 10))
    o.weight_decay = _per_component(0.0)
    o.alpha_f = 0.1
    o.b1, o.b2, o.eps = 0.9, 0.95, 1e-6
    o.max_grad_norm = 1.0
    o.z_loss = 1e-4
    o.grad_accum = 1

    d = c.data = ml_collections.ConfigDict()
    d.path = ""  # the user JSONL file
    d.image_dir = ""  # download cache of its URL images ("" = user_data.default_image_dir)
    d.allow_outside_images = False  # image paths outside the JSONL file's folder are refused unless True
    d.mix_pixmo_lite = 0.0  # fraction of examples drawn from PixMo-lite, in [0, 1)
    d.pixmo_lite_size = 10_000  # examples per PixMo-lite task
    d.global_batch = 16
    d.seq_len = 2304
    d.too_long = "truncate"  # the official collator's cut; "skip" drops longer examples
    d.seed = mixtures.STAGE2_SEED

    c.mesh = (1, -1, 1)
    c.seed = 6198
    k = c.checkpoint = ml_collections.ConfigDict()
    k.every = default_checkpoint_every(steps)
    k.every_minutes = 0.0  # also checkpoint once this many minutes passed since the last save (0: off)
    k.max_to_keep = 1
    k.async_save = True
    c.log_every = 10
    c.export = EXPORT_FORMATS
    return c


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


def make_data(cfg, tokenizer):
    """This process's batch iterator: the user data mixed with PixMo-lite at `data.mix_pixmo_lite`."""
    d = cfg.data
    if not 0 <= d.mix_pixmo_lite < 1:
        raise ValueError(f"data.mix_pixmo_lite must be in [0, 1), got {d.mix_pixmo_lite}")
    sources = {"user": user_data.UserData(d.path, d.image_dir or None, d.allow_outside_images)}
    rates = None
    if d.mix_pixmo_lite:
        lite = synthetic.sources(d.pixmo_lite_size, d.seed)
        lite_rates = mixtures.mixture_rates({n: len(s) for n, s in lite.items()}, mixtures.SYNTHETIC_MIXTURE)
        sources.update(lite)
        rates = {"user": 1 - d.mix_pixmo_lite, **{n: d.mix_pixmo_lite * r for n, r in lite_rates.items()}}
    options = mixtures.PipelineOptions(batch_size=d.global_batch, seq_len=d.seq_len, seed=d.seed,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       too_long=d.too_long)
    process = mixtures.example_processor(cfg.model, tokenizer, options, shuffle_messages=True)
    return iter(mixtures.pipeline(mixtures.mixture(sources, rates, process, d.seed), cfg.model, options))


def validate_data(cfg, tokenizer) -> user_data.Report:
    """`user_data.validate` of the config's data file, with the model's lengths (an answer token within
    data.seq_len)."""
    d = cfg.data
    options = mixtures.PipelineOptions(batch_size=1, seq_len=d.seq_len, too_long="truncate")
    process = mixtures.example_processor(cfg.model, tokenizer, options, shuffle_messages=False)
    return user_data.validate(d.path, d.image_dir or None, d.allow_outside_images, process, d.seq_len)


def run(cfg, workdir: epath.PathLike, mesh: Mesh | None = None) -> tuple[dict, dict[str, epath.Path]]:
    """Fine-tunes (resuming from `workdir`) and exports to workdir/export/<format>; a run stopped by a
    signal raises `trainer.TrainingStopped` and exports nothing.

    Returns (final train state, {format: export directory}).
    """
    mesh = mesh or trainer.make_mesh(cfg.mesh)
    model_cfg = io.load_config(cfg.init_from)  # the checkpoint's own config (cfg.model: training dtype, dropout)
    tokenizer = io.load_tokenizer(cfg.init_from, model_cfg)
    io.save_run_files(workdir, model_cfg, tokenizer)
    state = trainer.train(cfg, make_data(cfg, tokenizer), workdir, mesh, program(cfg, mesh))
    return state, io.export_run(workdir, trained_params(state, cfg), model_cfg, tokenizer, cfg.export)
