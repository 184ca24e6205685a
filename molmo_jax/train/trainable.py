"""What a training run trains: every param, or some components frozen, with or without LoRA adapters.

A training config trains every param unless it carries the fine-tuning options (the fine-tuning recipe does):
  freeze  components (`optim.COMPONENTS`) whose params stay out of the optimizer
  lora    {rank, alpha, targets}; rank > 0 adds LoRA adapters (`molmo_jax.lora`) to the trained params
With them the train state holds two param trees:
  params  the trainable tree: the params of the components not frozen and the adapters
          `<module>/lora_a|lora_b` (paths mirror the model, so `optim` groups them by component)
  frozen  the params of the frozen components, passed through every step untouched; present (maybe empty)
          whenever the config has a `freeze` field, so a checkpoint's tree depends only on the recipe
The loss sees `assemble(frozen, params)`: both trees joined and the adapters merged into their kernels
(`lora.apply_lora`), so only trainable leaves get gradients and optimizer moments. With LoRA, the components
that hold adapted kernels must be frozen.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flax import traverse_util

from molmo_jax import lora
from molmo_jax.models.molmo import Molmo, abstract_params
from molmo_jax.train import optim


def _flat(tree) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _tree(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


@dataclasses.dataclass(frozen=True)
class Trainable:
    """freeze: the frozen components; lora: the adapters' settings (None: no adapters); split: whether the
    train state holds a `frozen` tree."""
    freeze: tuple[str, ...] = ()
    lora: lora.LoraConfig | None = None
    split: bool = False

    @classmethod
    def of(cls, cfg) -> "Trainable":
        """The options of a training config: its `freeze` and `lora` fields where it has them."""
        if "freeze" not in cfg:
            return cls()
        lora_section = cfg.get("lora")
        lcfg = lora.LoraConfig.from_config(lora_section) if lora_section and lora_section.rank else None
        return cls(tuple(cfg.freeze), lcfg, True)

    def partition(self, params) -> tuple[dict, dict]:
        """(trainable, frozen): the params of the components not in / in `freeze` (boxed or not)."""
        unknown = set(self.freeze) - set(optim.COMPONENTS)
        if unknown:
            raise ValueError(f"cannot freeze {sorted(unknown)}: components are {optim.COMPONENTS}")
        flat = _flat(params)
        frozen = {k: v for k, v in flat.items() if optim.component_of(k) in self.freeze}
        return _tree({k: v for k, v in flat.items() if k not in frozen}), _tree(frozen)

    def abstract(self, model_cfg) -> tuple[Any, Any]:
        """(trainable, frozen or None) as boxed ShapeDtypeStructs; checks that LoRA adapts only frozen
        components."""
        boxed = abstract_params(model_cfg)
        if not self.split:
            return boxed, None
        trainable, frozen = self.partition(boxed)
        if self.lora is None:
            return trainable, frozen
        adapters = lora.abstract(model_cfg, self.lora)
        trained = sorted({p for p in _flat(adapters) if optim.component_of(p) not in self.freeze})
        if trained:
            raise ValueError(f"LoRA adapts {trained} of components that are trained fully; add them to freeze")
        return _tree({**_flat(trainable), **_flat(adapters)}), frozen

    def split_params(self, params, rng, model_cfg, mesh) -> tuple[Any, Any]:
        """(trainable, frozen or None) of a model's params; fresh adapters (`lora.init` with `rng`) join the
        trainable tree."""
        if not self.split:
            return params, None
        trainable, frozen = self.partition(params)
        if self.lora is not None:
            trainable = _tree({**_flat(trainable), **_flat(lora.init(rng, model_cfg, self.lora, mesh))})
        return trainable, frozen

    def model(self, model: Molmo, frozen) -> Any:
        """What the loss applies to the trainable tree: `model` itself, or an `AssembledModel`."""
        return model if frozen is None else AssembledModel(model, frozen, self.lora)

    def model_params(self, state: Mapping[str, Any]) -> Any:
        """The model's params of a train state, in the base shardings (adapters merged)."""
        if "frozen" not in state:
            return state["params"]
        base, adapters = _base_and_adapters(state["frozen"], state["params"])
        return lora.merge(base, adapters, self.lora) if adapters else base


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


@dataclasses.dataclass(frozen=True)
class AssembledModel:
    """A Molmo whose `apply` takes the trainable tree and assembles the full params from it (what
    `trainer.loss_and_grads` differentiates) and the frozen tree."""
    model: Molmo
    frozen: Any
    lcfg: lora.LoraConfig | None

    def apply(self, variables, *args, **kwargs):
        return self.model.apply({"params": assemble(self.frozen, variables["params"], self.lcfg)}, *args, **kwargs)
