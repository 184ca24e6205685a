"""molmo-jax: the Molmo vision-language models in JAX/Flax.

    import molmo_jax
    bundle = molmo_jax.load("Molmo-7B-D-0924/")
    print(molmo_jax.generate(bundle, "cat.jpg", "Point to the cat."))

The names below are imported on first use, so `import molmo_jax` stays cheap (no JAX import).
Token-level generation on preprocessed batches is `molmo_jax.decoding.generate(cfg, params, inputs, ...)`.

Imports point one way: `data_pipelines` imports the library, and the library imports `data_pipelines` only
at its edges, inside functions: the command-line modules (`molmo_jax/cli/`, `*_cli.py`) and the eval
runner's reader lookup (`eval.runner.open_dataset`); it never imports `experiments`
(tests/test_layout.py checks both).
"""
import importlib

_EXPORTS = {
    "load": "molmo_jax.api", "save": "molmo_jax.api",
    "MolmoBundle": "molmo_jax.api", "Prediction": "molmo_jax.api", "generate": "molmo_jax.api",
    "Sampling": "molmo_jax.decoding",
    "Preprocessor": "molmo_jax.preprocess", "collate": "molmo_jax.preprocess", "load_image": "molmo_jax.preprocess",
    "load_tokenizer": "molmo_jax.tokenizer",
    "extract_points": "molmo_jax.formatting",
    "pixel_points": "molmo_jax.points", "draw_points": "molmo_jax.points",
}
_RENAMED = {"draw_points": "draw"}
_SUBMODULES = ("api", "checkpoints", "cli", "config", "decoding", "formatting", "io", "points",
               "preprocess", "sharding", "tokenizer")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
