"""Flax linen modules of the Molmo model family."""
from molmo_jax.models.molmo import Molmo, abstract_params, init_params, param_count

__all__ = ["Molmo", "abstract_params", "init_params", "param_count"]
