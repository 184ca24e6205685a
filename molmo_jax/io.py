"""Checkpoint I/O, the one home: detect a directory's format, read its config, tokenizer and params (placed
on a mesh), write exports. Paths go through `etils.epath`, so a gs:// directory works where a local one does.

Formats (the same spelling everywhere: API, CLI, configs):
  native      the official allenai/molmo layout: config.json (an `olmo.config.ModelConfig` dict) +
              weights.safetensors with the official names
  hf_release  the Hugging Face release layout (allenai/Molmo-*-0924): config.json (with `auto_map`),
              preprocessor_config.json, processor_config.json, generation_config.json, sharded
              model-XXXXX-of-YYYYY.safetensors + model.safetensors.index.json. The dense release's config.json
              describes only the LLM (its remote code hard-codes the rest); our exports add `molmo_jax.json`, the
              full official config, for the vision tower, connector and formatting.
  orbax       our export: config.json (official dict) + params/ (an Orbax StandardCheckpointer directory)
  train       a training run (`molmo_jax.train`): its workdir, its checkpoints/ directory or one step of it;
              params of the latest step, config.json and the tokenizer from the workdir (`save_run_files`)

Every export holds config, weights and tokenizer (tokenizer.json + tokenizer_config.json). config.json is
written last: an export killed half-way has none and is reported as such, never loaded as a model.
On several processes (`jax.distributed`) every process calls the save functions alike; each file is written
once (Orbax: each process its shards; the rest: process 0), and they return when the export is complete.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import safetensors.numpy
from etils import epath
from tqdm import tqdm

from molmo_jax import checkpoints
from molmo_jax import config as config_lib
from molmo_jax import distributed, paths, preprocess, sharding
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.models.molmo import abstract_params
from molmo_jax.tokenizer import MolmoTokenizer, load_tokenizer as _load_tokenizer_file

EXPORT_FORMATS = ("native", "hf_release", "orbax")
FORMATS = EXPORT_FORMATS + ("train",)

CONFIG = "config.json"
NATIVE_WEIGHTS = "weights.safetensors"
ORBAX_DIR = "params"  # the Orbax params inside an orbax export
RELEASE_INDEX = "model.safetensors.index.json"
RELEASE_PREPROCESSOR = "preprocessor_config.json"
RELEASE_PROCESSOR = "processor_config.json"
RELEASE_GENERATION = "generation_config.json"
RELEASE_FULL_CONFIG = "molmo_jax.json"  # our addition to a dense release export: the full official config
TRAIN_CHECKPOINTS = "checkpoints"  # <workdir>/checkpoints/<step>/state, written by train.checkpointing
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
MAX_SHARD_BYTES = 5 << 30  # as the release's shards
EXPORT_DIR = "export"  # a finished training run's models: <workdir>/export/<format>


_path = paths.absolute


# ----------------------------------------------------------------------------- detect

def _steps(directory: epath.Path) -> list[int]:
    """Committed training steps in a Checkpointer directory (numbered step dirs holding `state`)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def _train_dirs(path: epath.Path) -> tuple[epath.Path, epath.Path] | None:
    """(run workdir, latest step dir) when `path` is a run workdir, its checkpoints dir or one step; else None."""
    if (path / "state").is_dir() and path.name.isdigit():
        return path.parent.parent, path
    for checkpoints_dir, workdir in ((path / TRAIN_CHECKPOINTS, path), (path, path.parent)):
        steps = _steps(checkpoints_dir)
        if steps:
            return workdir, checkpoints_dir / str(steps[-1])
    return None


def detect_format(path: str | os.PathLike) -> str:
    """The format (one of FORMATS) of the checkpoint directory `path`.

    Raises CheckpointError naming the directory when it is none, or a half-written export.
    """
    path = _path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if _train_dirs(path):
        return "train"
    has_config = (path / CONFIG).exists()
    if has_config and (path / ORBAX_DIR).is_dir():
        return "orbax"
    if has_config and (path / NATIVE_WEIGHTS).exists():
        return "native"
    if has_config and ((path / RELEASE_INDEX).exists() or list(path.glob("*.safetensors"))):
        return "hf_release"
    found = sorted(p.name for p in path.iterdir())
    if has_config:
        raise CheckpointError(f"{path}: {CONFIG} but no weights ({NATIVE_WEIGHTS}, model-*.safetensors or "
                              f"{ORBAX_DIR}/); it holds {found[:8]}")
    if any(n in (ORBAX_DIR, NATIVE_WEIGHTS, RELEASE_INDEX) or n.endswith(".safetensors") for n in found):
        raise CheckpointError(f"{path}: half-written export (weights but no {CONFIG}, which an export writes "
                              "last); write it again")
    raise CheckpointError(f"{path}: not a checkpoint directory (native, hf_release, orbax export or training "
                          f"run); it holds {found[:8] or 'nothing'}")


# ----------------------------------------------------------------------------- config and tokenizer

def _read_json(path: epath.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def model_dir(path: str | os.PathLike) -> epath.Path:
    """The directory holding config.json and the tokenizer: `path` itself, or a training run's workdir."""
    path = _path(path)
    train = _train_dirs(path) if path.is_dir() else None
    return train[0] if train else path


def load_config(path: str | os.PathLike, vision: Mapping[str, Any] | None = None):
    """The model config of the checkpoint directory `path` (any of FORMATS).

    vision: official ViT field overrides for an HF release whose vision tower is not the released CLIP
    (a real release's config.json cannot describe it).
    """
    path = _path(path)
    fmt = detect_format(path)
    home = model_dir(path)
    if not (home / CONFIG).exists():
        raise CheckpointError(f"{home}: training run without {CONFIG}; it was not started by a molmo-jax entry "
                              "point that records its model (`io.save_run_files`)")
    d = _read_json(home / CONFIG)
    if fmt != "hf_release":
        return config_lib.from_official(d, name=home.name)
    optional = {f: _read_json(path / f) if (path / f).exists() else None
                for f in (RELEASE_PREPROCESSOR, RELEASE_FULL_CONFIG)}
    return config_lib.from_hf_release(d, vision=vision, name=path.name, preprocessor=optional[RELEASE_PREPROCESSOR],
                                      full=optional[RELEASE_FULL_CONFIG])


def load_tokenizer(path: str | os.PathLike, cfg) -> MolmoTokenizer:
    """The tokenizer stored with the checkpoint directory `path` (a run: in its workdir)."""
    return _load_tokenizer_file(str(model_dir(path)), cfg.llm.vocab_size)


def save_tokenizer(tokenizer: MolmoTokenizer, path: str | os.PathLike):
    """tokenizer.json (Molmo tokens included) + tokenizer_config.json naming its EOS / BOS, into `path`."""
    path = _path(path)
    (path / "tokenizer.json").write_text(tokenizer.tokenizer.to_str())
    names = {k: tokenizer.tokenizer.id_to_token(i) for k, i in (("eos_token", tokenizer.eos_id),
                                                                 ("bos_token", tokenizer.bos_id))}
    (path / "tokenizer_config.json").write_text(json.dumps(names, indent=1))


def save_run_files(workdir: str | os.PathLike, cfg, tokenizer: MolmoTokenizer | None):
    """Records a training run's model in its workdir (config.json and, when known, the tokenizer), so its
    checkpoints load and export as a model (`load_params(workdir)`, `molmo-jax export`); process 0 writes them."""
    if jax.process_index() != 0:
        return
    workdir = _path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        save_tokenizer(tokenizer, workdir)
    (workdir / CONFIG).write_text(json.dumps(config_lib.to_official(cfg), indent=1))


# ----------------------------------------------------------------------------- params

def place(params_np: Mapping[str, Any], cfg, mesh=None) -> Any:
    """Puts a numpy param tree onto `mesh` (default: the first device) with the logical-axis shardings."""
    mesh = mesh or sharding.make_mesh()
    shardings = sharding.param_shardings(abstract_params(cfg), mesh)
    dtype = jax.numpy.dtype(cfg.param_dtype)

    def put(x, s):
        x = np.asarray(x, dtype)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, params_np, shardings)


def _target(cfg, mesh) -> Any:
    """The params of `cfg` as ShapeDtypeStructs carrying their shardings on `mesh` (an Orbax restore target)."""
    mesh = mesh or sharding.make_mesh()
    boxed = abstract_params(cfg)
    dtype = jax.numpy.dtype(cfg.param_dtype)
    # unboxed without sharding constraints, which fail on ShapeDtypeStructs under a caller's mesh context; a
    # param declared without logical axes (e.g. a registered pooling's `self.param`) is not boxed: replicated
    boxed_leaf = lambda x: isinstance(x, nn.meta.AxisMetadata)
    values = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if boxed_leaf(x) else x, boxed, is_leaf=boxed_leaf)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s), values,
                        sharding.param_shardings(boxed, mesh))


def _check_stored_shapes(path: epath.Path, stored: Any, target: Any):
    """Raises CheckpointError naming the first params whose stored shape differs from the model's, or that
    are missing / unexpected."""
    def flat(tree):
        return {"/".join(str(getattr(k, "key", k)) for k in p): tuple(x.shape)
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    have, want = flat(stored), flat(target)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = [f"{k} {have[k]} vs the model's {want[k]}" for k in sorted(set(have) & set(want)) if have[k] != want[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: params do not match the model config: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shapes {wrong[:5]}")


def _restore_orbax(path: epath.Path, cfg, mesh) -> Any:
    target = _target(cfg, mesh)
    with ocp.StandardCheckpointer() as checkpointer:
        _check_stored_shapes(path, checkpointer.metadata(path).item_metadata.tree, target)
        return checkpointer.restore(path, target)


def _restore_train(step_dir: epath.Path, cfg, mesh) -> Any:
    """The params subtree of a training checkpoint step (optimizer state, step and RNG are not read)."""
    target = {"params": _target(cfg, mesh)}
    stored = ocp.PyTreeCheckpointHandler().metadata(step_dir / "state").tree
    with ocp.PyTreeCheckpointer() as checkpointer:
        if "frozen" in stored:
            raise CheckpointError(f"{step_dir}: a fine-tuning checkpoint (frozen params / LoRA adapters); its "
                                  "export is written by the fine-tuning run (<workdir>/export)")
        _check_stored_shapes(step_dir, stored.get("params", {}), target["params"])
        args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        return checkpointer.restore(step_dir / "state", args=args)["params"]


def safetensor_files(path: str | os.PathLike) -> list[epath.Path]:
    """The safetensors files of an HF release or a transformers `save_pretrained` directory: those its
    model.safetensors.index.json names, else every *.safetensors. Raises CheckpointError when there are none."""
    path = _path(path)
    index = path / RELEASE_INDEX
    if index.exists():
        return [path / f for f in sorted(set(_read_json(index)["weight_map"].values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files and no {RELEASE_INDEX}")
    return files


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


def _deserialize(data: bytes) -> dict[str, np.ndarray]:
    return {name: np.frombuffer(t["data"], _SAFETENSORS_DTYPES[t["dtype"]]).reshape(t["shape"])
            for name, t in safetensors.deserialize(data)}


def read_safetensors(files: Sequence[str | os.PathLike], progress: bool = False) -> dict[str, np.ndarray]:
    """{name: array} of the safetensors `files`, local or gs://, with a progress bar in bytes; bfloat16
    tensors (base LLMs) stay bfloat16 (numpy's safetensors reader has no bfloat16).

    Raises CheckpointError naming a missing or unreadable file.
    """
    files = [epath.Path(f) for f in files]
    for f in files:
        if not f.exists():
            raise CheckpointError(f"{f}: weight file missing (a half-written or incomplete checkpoint)")
    out = {}
    with tqdm(total=sum(f.stat().length for f in files), unit="B", unit_scale=True, desc="loading weights",
              disable=None if progress else True, leave=False) as bar:
        for f in files:
            try:
                tensors = _deserialize(f.read_bytes())
            except Exception as e:  # the Rust reader raises SafetensorError, not a ValueError
                raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from e
            out.update(tensors)
            bar.update(sum(x.nbytes for x in tensors.values()))
    return out


def load_params(path: str | os.PathLike, cfg, mesh=None, progress: bool = False) -> Any:
    """The params of the checkpoint directory `path` (any of FORMATS) for `cfg`, sharded over `mesh`.

    Raises CheckpointError naming the path and what does not fit (missing files, tensors missing /
    unexpected / mis-shaped against `cfg`).
    """
    path = _path(path)
    fmt = detect_format(path)
    if fmt == "orbax":
        return _restore_orbax(path / ORBAX_DIR, cfg, mesh)
    if fmt == "train":
        return _restore_train(_train_dirs(path)[1], cfg, mesh)
    tensors = read_safetensors([path / NATIVE_WEIGHTS] if fmt == "native" else safetensor_files(path), progress)
    if fmt == "hf_release":
        tensors = checkpoints.release_to_native(tensors, cfg)
    try:
        params = checkpoints.native_to_params(tensors.__getitem__, tensors.keys(), cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return place(params, cfg, mesh)


def load(path: str | os.PathLike, cfg=None, mesh=None, vision: Mapping[str, Any] | None = None,
         progress: bool = False) -> tuple[Any, Any]:
    """(config, params sharded over `mesh`) of a checkpoint directory; `cfg` replaces the stored config."""
    cfg = cfg or load_config(path, vision)
    return cfg, load_params(path, cfg, mesh, progress)


# ----------------------------------------------------------------------------- save

def _write_safetensors(tensors: Mapping[str, np.ndarray], path: epath.Path, metadata: dict | None = None):
    if not paths.is_remote(path):
        safetensors.numpy.save_file(dict(tensors), str(path), metadata=metadata)
    else:
        path.write_bytes(safetensors.numpy.save(dict(tensors), metadata=metadata))


def _write_json(path: epath.Path, d: Mapping[str, Any]):
    path.write_text(json.dumps(d, indent=2) + "\n")


def _release_preprocessor_config(cfg) -> dict[str, Any]:
    """The release's preprocessor_config.json (fields of the remote `MolmoImageProcessor`) for cfg;
    `config.from_hf_release` reads it back."""
    mean, std = preprocess.NORM_STATS.get(cfg.vit.kind, ((0.5,) * 3, (0.5,) * 3))  # siglip: 2x - 1
    tokens_h, tokens_w = config_lib.pooled_grid(cfg)
    return {
        "auto_map": {"AutoImageProcessor": "image_preprocessing_molmo.MolmoImageProcessor",
                     "AutoProcessor": "preprocessing_molmo.MolmoProcessor"},
        "base_image_input_size": list(cfg.vit.image_size), "do_normalize": True,
        "image_mean": list(mean), "image_std": list(std),
        "image_padding_mask": cfg.connector.padding_embed is not None, "image_patch_size": cfg.vit.patch_size,
        "image_processor_type": "MolmoImageProcessor", "image_token_length_h": tokens_h,
        "image_token_length_w": tokens_w, "max_crops": cfg.preprocess.max_crops,
        "overlap_margins": list(cfg.preprocess.overlap_margins), "processor_class": "MolmoProcessor",
    }


def _save_hf_release(native: Mapping[str, np.ndarray], cfg, path: epath.Path, max_shard_bytes: int):
    """The release's weights (sharded, in state-dict order) and its files other than config.json."""
    tensors = checkpoints.native_to_release(native, cfg)
    shards, current, size = [], {}, 0
    for k, x in tensors.items():
        if current and size + x.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k], size = x, size + x.nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(shard, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    _write_json(path / RELEASE_INDEX, {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())},
                                       "weight_map": weight_map})
    _write_json(path / RELEASE_PREPROCESSOR, _release_preprocessor_config(cfg))
    _write_json(path / RELEASE_PROCESSOR, {"auto_map": {"AutoProcessor": "preprocessing_molmo.MolmoProcessor"},
                                           "processor_class": "MolmoProcessor"})
    _write_json(path / RELEASE_GENERATION, {"_from_model_config": True})
    if cfg.llm.block_type != "moe":  # MolmoE's release config.json is the full official config already
        _write_json(path / RELEASE_FULL_CONFIG, config_lib.to_official(cfg))


def save(params: Any, cfg, tokenizer: MolmoTokenizer, path: str | os.PathLike, fmt: str,
         max_shard_bytes: int = MAX_SHARD_BYTES):
    """Exports a model (params: boxed or not, any sharding) with its config and tokenizer to the new or empty
    directory `path` in `fmt` (one of EXPORT_FORMATS). config.json is written last.

    On several processes every one calls it with the same arguments, and `path` is a directory they all see
    (gs://, a shared file system): Orbax writes each process's shards, the native / hf_release weights are
    gathered (`distributed.host_copy`), process 0 alone writes every other file, and every process returns
    once the export is complete.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {EXPORT_FORMATS}")
    path = _path(path)
    if path.exists() and any(path.iterdir()):
        raise CheckpointError(f"{path}: exists and is not empty")
    distributed.barrier(f"io.save {path}: checked")  # every process looked before any writes
    path.mkdir(parents=True, exist_ok=True)
    writer = jax.process_index() == 0
    if fmt == "orbax":
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path / ORBAX_DIR, nn.meta.unbox(params))
            checkpointer.wait_until_finished()
        config_json = config_lib.to_official(cfg)
    else:
        native = checkpoints.params_to_native(distributed.host_copy(nn.meta.unbox(params)), cfg)
        if fmt == "native":
            if writer:
                _write_safetensors(native, path / NATIVE_WEIGHTS)
            config_json = config_lib.to_official(cfg)
        else:
            if writer:
                _save_hf_release(native, cfg, path, max_shard_bytes)
            config_json = config_lib.to_hf_release(cfg)
    if writer:
        save_tokenizer(tokenizer, path)
        _write_json(path / CONFIG, config_json)
    distributed.barrier(f"io.save {path}: written")


def export_run(workdir: str | os.PathLike, params: Any, cfg, tokenizer: MolmoTokenizer,
               formats: Sequence[str] = ("orbax",)) -> dict[str, epath.Path]:
    """The end of a training run that completed: its model in each of `formats` at <workdir>/export/<format>
    (replacing an earlier export). Returns {format: directory}."""
    return save_formats(params, cfg, tokenizer, epath.Path(workdir) / EXPORT_DIR, formats)


def save_formats(params: Any, cfg, tokenizer: MolmoTokenizer, directory: str | os.PathLike,
                 formats: Sequence[str]) -> dict[str, epath.Path]:
    """`save` in each of `formats` to <directory>/<format>, replacing what is there (on several processes:
    called by every one, as `save`). Returns {format: path}."""
    exports = {}
    for fmt in formats:
        exports[fmt] = epath.Path(directory) / fmt
        if jax.process_index() == 0 and exports[fmt].exists():
            exports[fmt].rmtree()
        distributed.barrier(f"io.save_formats {exports[fmt]}: removed")
        save(params, cfg, tokenizer, exports[fmt], fmt)
    return exports


def export(source: str | os.PathLike, out: str | os.PathLike, fmt: str = "orbax", mesh=None,
           vision: Mapping[str, Any] | None = None) -> epath.Path:
    """Writes the model of any checkpoint directory `source` (a training run included) to `out` in `fmt`."""
    cfg = load_config(source, vision)
    tokenizer = load_tokenizer(source, cfg)
    save(load_params(source, cfg, mesh), cfg, tokenizer, out, fmt)
    return _path(out)
