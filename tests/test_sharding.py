"""Sharded execution on 8 simulated CPU devices: same logits on every mesh, params laid out by the rules."""
from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

import molmo_jax
from fixture_cases import ROOT
from molmo_jax import config, plan, sharding
from molmo_jax.models.molmo import Molmo, abstract_params, dummy_inputs, init_params

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def batch(cfg, n: int = 8, seq_len: int = 48) -> dict[str, np.ndarray]:
    """Random ids with right padding, images on every other example, image tokens at positions 1..."""
    rng = np.random.default_rng(0)
    inputs = dummy_inputs(cfg, batch=n, seq_len=seq_len)
    inputs["input_ids"] = rng.integers(0, cfg.llm.vocab_size, (n, seq_len)).astype(np.int32)
    inputs["input_ids"][1::2, -5:] = -1
    inputs["images"] = rng.normal(size=inputs["images"].shape).astype(np.float32)
    inputs["images"][1::2] = -1
    inputs["image_masks"] = rng.choice([0.0, 0.5, 1.0], inputs["image_masks"].shape).astype(np.float32)
    idx = inputs["image_input_idx"]
    idx[:, 1, :20] = np.arange(1, 21)
    idx[:, 0, :8] = np.arange(30, 38)
    return inputs


def small(family: str):
    """The tiny config with a shallower ViT and two crops per image: compiles in seconds on 8 devices."""
    cfg = config.tiny(family)
    cfg.vit.n_layers, cfg.vit_layers, cfg.preprocess.max_crops = 3, (-1, -3), 1
    return config.validate(cfg)


@functools.lru_cache(maxsize=None)
def reference(family: str):
    cfg = small(family)
    params = init_params(cfg, jax.random.key(0), sharding.make_mesh())
    params = jax.tree.map(lambda x: x + 0.05 * np.random.default_rng(1).normal(size=x.shape), params)
    logits = jax.jit(lambda p, kw: Molmo(cfg).apply({"params": p}, **kw))(params, batch(cfg))
    return cfg, jax.device_get(params), np.asarray(logits)


def sharded_logits(cfg, params_host, mesh):
    shardings = sharding.param_shardings(abstract_params(cfg), mesh)
    params = jax.tree.map(lambda x, s: jax.device_put(x, s), params_host, shardings)
    inputs = sharding.shard_batch(batch(cfg), mesh)
    with sharding.use_mesh(mesh):
        logits = jax.jit(lambda p, kw: Molmo(cfg).apply({"params": p}, **kw))(params, inputs)
    return params, logits


def assert_rules_layout(params, cfg, mesh):
    """Every param's NamedSharding is what LOGICAL_RULES gives its logical axes, and shards have that shape."""
    specs = nn.get_partition_spec(abstract_params(cfg))
    rules = dict(sharding.LOGICAL_RULES)
    spec_leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    leaves = jax.tree.leaves(params)
    assert len(spec_leaves) == len(leaves) > 30
    for (path, spec), leaf in zip(spec_leaves, leaves):
        expected = tuple(rules[a] if a is not None else None for a in spec)
        assert isinstance(leaf.sharding, NamedSharding), jax.tree_util.keystr(path)
        got = tuple(leaf.sharding.spec) + (None,) * (len(expected) - len(leaf.sharding.spec))
        assert got == expected, (jax.tree_util.keystr(path), got, expected)
        parts = [int(np.prod([mesh.shape[n] for n in ((m,) if isinstance(m, str) else (m or ()))]))
                 for m in expected]
        assert leaf.addressable_shards[0].data.shape == tuple(d // p for d, p in zip(leaf.shape, parts))


def test_mesh_specs_and_the_mesh_context():
    """-1 takes the devices the other sizes leave; a smaller spec takes the first devices; `use_mesh` sets
    the mesh and the logical rules together; a spec the devices cannot fill is one error line."""
    devices = jax.devices()
    assert dict(sharding.make_mesh((2, -1, 1)).shape) == dict(data=2, fsdp=4, tensor=1, expert=1)
    assert list(sharding.make_mesh((1, 2, 1, 2)).devices.flat) == devices[:4]
    assert list(sharding.make_mesh().devices.flat) == devices[:1]
    with sharding.use_mesh((2, 2, 2)) as mesh:
        assert jax.sharding.get_abstract_mesh().shape == mesh.shape
        assert sharding.logical_to_spec(("batch", "mlp")) == nn.logical_to_mesh_axes(("batch", "mlp"))
    assert nn.get_logical_axis_rules() == ()
    for spec in [(3, -1, 1), (4, 4, 1), (-1, -1, 1)]:
        with pytest.raises(ValueError, match=rf"mesh {re.escape(str(spec))} .* does not fit 8 devices"):
            sharding.make_mesh(spec)
    with pytest.raises(ValueError, match="does not fit 2 devices"):
        sharding.make_mesh((1, 1, 1), devices[:2])


def test_a_mesh_that_splits_a_param_unevenly_is_one_error_line():
    """fsdp=3 cannot split the tiny model's 128-wide image features: the error names the first such param."""
    with pytest.raises(ValueError, match=r"does not split param \['connector'\]\['pad_embed'\] of shape \(2, 128\) "
                                         r"evenly \(128 over fsdp = 3 shards\)"):
        sharding.param_shardings(abstract_params(config.tiny("qwen2")), sharding.make_mesh((1, 3, 1)))
    # the planner warns of the same mesh (it plans meshes larger than this machine, so it does not raise)
    warnings = plan.plan(config.tiny("qwen2"), "fsdp=3", batch=3, seq_len=16)["warnings"]
    assert "connector/pad_embed does not split evenly over this mesh: training refuses it" in warnings


@pytest.mark.parametrize("family", ["qwen2", "olmoe"])
@pytest.mark.parametrize("shape", MESHES, ids=str)
def test_mesh_logits_match_single_device(family, shape):
    cfg, params_host, expected = reference(family)
    mesh = sharding.make_mesh(shape)
    params, logits = sharded_logits(cfg, params_host, mesh)
    assert logits.sharding.shard_shape(logits.shape)[0] == 8 // (shape[0] * shape[1])
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
    assert_rules_layout(params, cfg, mesh)


def test_init_creates_params_in_their_shardings():
    """init_params jits init with out_shardings: on (2, 2, 2) the LLM query kernel
    [layers, embed, heads, head_dim] is split on fsdp (embed) and tensor (heads)."""
    cfg = small("qwen2")
    mesh = sharding.make_mesh((2, 2, 2))
    params = init_params(cfg, jax.random.key(0), mesh)
    assert_rules_layout(params, cfg, mesh)
    kernel = params["llm"]["blocks"]["attention"]["query"]["kernel"]
    assert kernel.shape == (2, 64, 4, 16)
    assert {s.data.shape for s in kernel.addressable_shards} == {(2, 32, 2, 16)}


def test_full_size_model_never_materialises_on_one_device():
    """Molmo-72B on an (1, 4, 2) mesh: every device holds about 1/8 of the parameters (abstract shapes)."""
    cfg = config.get_config("Molmo-72B-0924")
    mesh = sharding.make_mesh((1, 4, 2))
    boxed = abstract_params(cfg)
    shardings = sharding.param_shardings(boxed, mesh)
    leaves = jax.tree.leaves(nn.meta.unbox(boxed))
    total = sum(int(np.prod(x.shape)) for x in leaves)
    per_device = sum(int(np.prod(s.shard_shape(x.shape))) for x, s in zip(leaves, jax.tree.leaves(shardings)))
    assert total == 73_308_285_952
    assert per_device < total / 7.9


def test_generate_on_a_mesh_pads_any_batch_size():
    """The fixture model on fsdp=8 answers batches of 1, 3 and 8 (padded to 8, padding dropped) exactly as
    unsharded; rows mix image and text-only prompts."""
    fixture = ROOT / "qwen2_7b_d"
    cases = [fixture / "cases" / c for c in ("pointing", "text_only")]
    images = [(c / "image.png") if (c / "image.png").exists() else None for c in cases] * 4
    prompts = [(c / "prompt.txt").read_text() for c in cases] * 4
    prompts = [p + " " * i for i, p in enumerate(prompts)]  # every row its own prompt
    expected = molmo_jax.load(fixture).generate_batch(images, prompts, max_new_tokens=6)
    on_mesh = molmo_jax.load(fixture, mesh=sharding.make_mesh((1, 8, 1)))
    for n in (1, 3, 8):
        assert on_mesh.generate_batch(images[:n], prompts[:n], max_new_tokens=6) == expected[:n]
