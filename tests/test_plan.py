"""The memory planner: mesh parsing, param shards against JAX's own shard shapes, the analytic estimate
against XLA's compiled memory analysis, and the `plan` subcommand."""
from __future__ import annotations

import json
import math

import pytest
from jax.sharding import AbstractMesh, NamedSharding

from molmo_jax import cli, config, plan
from molmo_jax.models import layers


def test_parse_mesh():
    assert plan.parse_mesh("fsdp=256,tensor=1") == {"data": 1, "fsdp": 256, "tensor": 1, "expert": 1}
    assert plan.parse_mesh(" data = 2 , fsdp=4,expert=2") == {"data": 2, "fsdp": 4, "tensor": 1, "expert": 2}


@pytest.mark.parametrize("text, message", [
    ("", "is not AXIS=SIZE"), ("fsdp", "is not AXIS=SIZE"), ("fsdp=x", "is not AXIS=SIZE"),
    ("fsdp=-2", "is not AXIS=SIZE"), ("fsdp=4;tensor=2", "is not AXIS=SIZE"), ("fsdp=0", "sizes must be >= 1"),
    ("pipeline=2", "unknown axis 'pipeline'"), ("fsdp=2,fsdp=4", "given twice")])
def test_parse_mesh_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        plan.parse_mesh(text)


def test_batch_must_split_over_the_batch_axes():
    with pytest.raises(ValueError, match="not divisible by the 16 batch shards"):
        plan.plan(config.tiny("qwen2"), "data=2,fsdp=8", batch=24, seq_len=16)


@pytest.mark.parametrize("name", sorted(config.RELEASED))
def test_released_param_bytes_per_device(name):
    cfg = config.get_config(name)
    count = plan.param_bytes(cfg, plan.parse_mesh("data=8"))["count"]
    assert plan.param_bytes(cfg, plan.parse_mesh("data=8"))["local_bytes"] == count * 4  # replicated
    fsdp = plan.param_bytes(cfg, plan.parse_mesh("fsdp=16"))
    assert not fsdp["uneven"]
    # all but the norm scales and some biases (< 0.01% of the params, replicated) is split 16 ways
    assert count * 4 / 16 <= fsdp["local_bytes"] <= 1.005 * count * 4 / 16
    # the direct shard computation agrees with JAX's NamedSharding on an abstract 256-device mesh
    mesh = {"data": 1, "fsdp": 16, "tensor": 4, "expert": 4}
    abstract = AbstractMesh(tuple(mesh.values()), tuple(mesh))
    for leaf in plan.param_leaves(cfg):
        if not leaf.uneven(mesh):
            assert plan.local_shape(leaf.shape, leaf.spec, mesh) == \
                NamedSharding(abstract, leaf.spec).shard_shape(leaf.shape), leaf.path


def test_param_count_of_the_released_7b_d():
    assert plan.plan(config.get_config("Molmo-7B-D-0924"), "fsdp=8", 8, 128)["param_count"] == 8_021_025_280


def test_estimate_within_1_3x_of_compiled_memory_analysis():
    """Compared: our per-device total (params + AdamW + grads + batch + activations) against XLA's peak =
    argument + output - alias + temp bytes of the jitted trainer step (loss, grads, AdamW update; the
    donated state's outputs alias its inputs), for the tiny model with full remat on one device, its ViT at
    224 px: 257 tokens keep the CPU's attention in the batched form accelerators run (at 336 px the CPU runs
    the ViT's heads one at a time, `layers.HEAD_LOOP_MIN_SCORES`, storing no probabilities)."""
    cfg = config.tiny("qwen2")
    cfg.vit.update(image_size=(224, 224), num_pos=16 * 16 + 1)
    cfg = config.validate(cfg)
    assert cfg.vit.num_pos ** 2 < layers.HEAD_LOOP_MIN_SCORES
    p = plan.plan(cfg, "fsdp=1", batch=8, seq_len=64, crops=1, with_compiled=True)
    ratio = p["bytes"]["total"] / p["compiled"]["peak"]
    assert 1 / 1.3 <= ratio <= 1.3, (p["bytes"], p["activations"], p["compiled"])
    # arguments: params, AdamW moments, batch (+ a few scalars: step, rng, Adam's count)
    state_and_batch = p["bytes"]["params"] + p["bytes"]["optimizer"] + p["bytes"]["batch"]
    assert 0 <= p["compiled"]["argument"] - state_and_batch < 64


def test_fits_uses_the_headroom():
    p = plan.plan(config.get_config("Molmo-72B-0924"), "fsdp=8", batch=8, seq_len=2304)
    assert not p["fits"]["H200"]["fits"]  # 72B params + AdamW on 8 devices: > 100 GiB each
    small = plan.plan(config.tiny("olmoe"), "expert=2,fsdp=2", batch=4, seq_len=32)
    assert small["fits"]["TPU v5e"]["fits"] and small["bytes"]["total"] < 16 * plan.GiB


def test_plan_subcommand(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--config", "tiny-qwen2", "--config", "tiny-olmoe", "--mesh", "fsdp=2",
                     "--mesh", "data=2,tensor=2", "--batch", "4", "--seq", "32", "--crops", "1",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| tiny-olmoe | data=2,tensor=2 | 2 | 32 | 1 | full |" in text
    plans = json.loads(out.read_text())
    assert [(p["model"], p["mesh"]["fsdp"]) for p in plans] == [
        ("tiny-qwen2", 2), ("tiny-qwen2", 1), ("tiny-olmoe", 2), ("tiny-olmoe", 1)]
    assert all(math.isclose(p["bytes"]["total"], sum(v for k, v in p["bytes"].items() if k != "total"))
               for p in plans)
