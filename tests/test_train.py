"""Trainer: optimizer and schedule parity with the official recipe, exact resume after SIGKILL (during
saves) / SIGTERM, crash-safe async checkpoints, restore onto another mesh, and the training loss on the official fixtures."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import molmo_jax
from data_pipelines import random_batches
from molmo_jax import io, sharding
from molmo_jax.models.molmo import Molmo, abstract_params
from molmo_jax.recipes import common, stage1, stage2
from molmo_jax.train import checkpointing, metrics_log, optim, trainer
from test_official_parity import TRAIN_CASES, case_id, load_arrays, load_model, model_inputs

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "molmo_ref" / "qwen2_7b_d" / "tokenizer.json"


def optim_config(**overrides):
    c = stage1.get_config("tiny").optim
    c.update(overrides)
    return c


# ------------------------------------------------------------------------------------------ optimizer


def official_lr(peak, warmup, total, step, alpha_f=0.1):
    """olmo/optim.py CosWithWarmup.get_lr with warmup_min_lr = 0 (verbatim logic)."""
    eta_min = peak * alpha_f
    if step < warmup:
        return peak * min(step, warmup) / warmup
    if step >= total:
        return eta_min
    return eta_min + (peak - eta_min) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def test_schedule_matches_official_at_key_steps():
    peak, warmup, total = 2e-4, 200, 1000
    schedule = optim.cosine_with_warmup(peak, warmup, total)
    # update count c uses the official lr(c + 1): first update at peak / warmup, not 0
    assert float(schedule(0)) == pytest.approx(peak / warmup, rel=1e-6)
    assert float(schedule(warmup - 1)) == pytest.approx(peak, rel=1e-6)
    assert float(schedule((warmup + total) // 2 - 1)) == pytest.approx(0.55 * peak, rel=1e-5)
    assert float(schedule(total - 1)) == pytest.approx(0.1 * peak, rel=1e-6)
    assert float(schedule(10 * total)) == pytest.approx(0.1 * peak, rel=1e-6)
    for count in [0, 1, 50, 198, 199, 200, 201, 333, 600, 998, 999, 1000, 1500]:
        assert float(schedule(count)) == pytest.approx(official_lr(peak, warmup, total, count + 1), rel=1e-5)


def test_components_and_decay_mask_follow_the_official_groups():
    params = nn.meta.unbox(abstract_params(stage1.get_config("tiny").model))
    flat = {optim.path_str(p): (c, d) for (p, c), d in zip(
        jax.tree_util.tree_leaves_with_path(optim.component_labels(params)),
        jax.tree.leaves(optim.decay_mask(params)))}
    assert flat["llm/embedder/new_embedding"] == ("connector", False)
    assert flat["llm/embedder/embedding"] == ("llm", False)
    assert flat["connector/pad_embed"] == ("connector", True)
    assert flat["connector/pooling/attention/query/bias"] == ("connector", True)  # biases decay officially
    assert flat["vit/positional_embedding"] == ("vit", False)
    assert flat["vit/class_embedding"] == ("vit", False)
    assert flat["vit/pre_ln/scale"] == ("vit", False)
    assert flat["vit/blocks/attention_norm/bias"] == ("vit", False)
    assert flat["vit/blocks/feed_forward/wi/kernel"] == ("vit", True)
    assert flat["llm/blocks/attn_norm/scale"] == ("llm", False)
    assert flat["llm/final_norm/scale"] == ("llm", False)
    assert flat["llm/lm_head/kernel"] == ("llm", True)


def reference_adamw_step(p, g, m, v, t, lr, wd, decay, b1=0.9, b2=0.95, eps=1e-6):
    """torch.optim.AdamW, one parameter, step t (1-based), float64."""
    p = p * (1 - lr * wd) if decay else p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p, m, v


def test_optimizer_step_matches_hand_computation():
    """Two updates of the per-component clip + AdamW on a tiny tree vs a float64 transcription of the
    official step (clip each component to norm 1, then torch AdamW per group)."""
    rng = np.random.default_rng(0)
    shapes = {"connector": {"proj": {"kernel": (3, 4)}}, "vit": {"pre_ln": {"scale": (4,)}, "w": {"kernel": (4, 2)}},
              "llm": {"embedder": {"embedding": (5, 2), "new_embedding": (2, 2)}, "mlp": {"kernel": (2, 3)}}}
    is_shape = lambda x: isinstance(x, tuple)
    params = jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes, is_leaf=is_shape)
    grads = [jax.tree.map(lambda s: (rng.standard_normal(s) * 3).astype(np.float32), shapes, is_leaf=is_shape)
             for _ in range(2)]
    grads[0]["vit"] = jax.tree.map(lambda x: x * 1e-3, grads[0]["vit"])  # vit unclipped at step 1
    cfg = optim_config(steps=10, lr=common.per_component(1e-2, 3e-2, 2e-2),
                       warmup=common.per_component(2, 4, 3), weight_decay=common.per_component(0.1, 0.2, 0.3))
    opt = optim.make(cfg)
    state, ours = opt.tx.init(params), params
    update = jax.jit(opt.tx.update)
    for g in grads:
        updates, state = update(g, state, ours)
        ours = optax.apply_updates(ours, updates)

    labels = optim.component_labels(params)
    decay = optim.decay_mask(params)
    ref = jax.tree.map(lambda x: x.astype(np.float64), params)
    mom = [jax.tree.map(np.zeros_like, ref) for _ in range(2)]
    for t, g in enumerate(grads, start=1):
        norms = {c: math.sqrt(sum(float(np.sum(np.square(x.astype(np.float64))))
                                  for x, l in zip(jax.tree.leaves(g), jax.tree.leaves(labels)) if l == c))
                 for c in optim.COMPONENTS}
        flat = []
        for p, gg, m, v, c, d in zip(*(jax.tree.leaves(x) for x in (ref, g, *mom, labels, decay))):
            lr = official_lr(cfg.lr[c], cfg.warmup[c], cfg.steps, t)
            gg = gg.astype(np.float64) * min(1.0, 1.0 / (norms[c] + 1e-6))
            flat.append(reference_adamw_step(p, gg, m, v, t, lr, cfg.weight_decay[c], d))
        treedef = jax.tree.structure(ref)
        ref, mom[0], mom[1] = (jax.tree.unflatten(treedef, [f[i] for f in flat]) for i in range(3))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-6, atol=2e-7)
    assert opt.learning_rates(0)["connector"] == pytest.approx(1e-2 / 2)


def test_stage_configs():
    for arg in ("tiny", "Molmo-7B-D-0924", "MolmoE-1B-0924"):
        s1, s2 = stage1.get_config(arg), stage2.get_config(arg)
        assert s1.model.llm.response_residual_dropout == 0.1 and s1.model.llm.residual_dropout == 0.0
        assert s2.model.llm.response_residual_dropout == 0.0 and s2.model.llm.residual_dropout == 0.1
        assert s1.optim.z_loss == 1e-4 and (s1.optim.b1, s1.optim.b2, s1.optim.eps) == (0.9, 0.95, 1e-6)
    s1, s2 = stage1.get_config("Molmo-7B-D-0924"), stage2.get_config("Molmo-7B-D-0924")
    assert dict(s1.optim.lr) == dict(connector=2e-4, vit=6e-6, llm=2e-5)
    assert dict(s1.optim.warmup) == dict(connector=200, vit=2000, llm=2000)
    assert dict(s2.optim.lr) == dict(connector=5e-6, vit=5e-6, llm=1e-5)
    assert (s1.data.global_batch, s2.data.global_batch, s2.optim.steps) == (128, 256, 30_000)
    assert s1.model.dtype == "bfloat16" and s1.model.param_dtype == "float32"


# -------------------------------------------------------------------------------------- loss on fixtures


@pytest.mark.parametrize("pair", TRAIN_CASES, ids=case_id)
def test_training_loss_equals_official_teacher_forced_loss(pair):
    """The trainer's loss path (collator names, normalisation by the weight sum, z_loss 0) on a fixture."""
    arrays = load_arrays(*pair)
    cfg, params, _ = load_model(pair[0])
    inputs = model_inputs(arrays, prefix="train_")
    batch = {**inputs, "labels": arrays["train_target_tokens"][None], "loss_masks": arrays["train_loss_masks"][None]}
    if "train_position_ids" in arrays:
        batch["position_ids"] = arrays["train_position_ids"][None]
    batch = trainer.host_batch(batch)
    stats = jax.jit(lambda p, b: trainer.loss_sums(p, b, jax.random.PRNGKey(0), model=Molmo(cfg), z_loss=0.0))(
        params, batch)
    normalizer = batch["loss_masks"][batch["loss_masks"] > 0].sum()
    np.testing.assert_allclose(float(stats["total"]) / normalizer, float(arrays["train_loss_mean"]), rtol=1e-4)


# ------------------------------------------------------------------------------------------ checkpoints


def random_state(target, seed: int):
    """A train state with random values laid out as `target` (ShapeDtypeStructs with shardings)."""
    rng = np.random.default_rng(seed)

    def make(x):
        v = rng.standard_normal(x.shape).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else \
            rng.integers(0, 1000, x.shape).astype(x.dtype)
        return jax.make_array_from_callback(x.shape, x.sharding, lambda idx: v[idx])

    return jax.tree.map(make, target)


def test_restore_onto_another_mesh(tmp_path):
    cfg = stage1.get_config("tiny")
    opt = optim.make(cfg.optim)
    src = trainer.abstract_state(cfg.model, opt, sharding.make_mesh((8, 1, 1)))
    dst = trainer.abstract_state(cfg.model, opt, sharding.make_mesh((2, 4, 1)))
    state = random_state(src, 0)
    data = random_batches.RandomBatches(cfg.model, 2, 8)
    data.set_state({"next_index": 7})
    ckpt = checkpointing.Checkpointer(tmp_path, every=1)
    assert ckpt.save(3, state, data)
    ckpt.wait()
    data.set_state({"next_index": 0})
    restored = checkpointing.Checkpointer(tmp_path, every=1).restore(dst, data)
    assert data.get_state() == {"next_index": 7}
    for a, b, t in zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(dst)):
        assert b.sharding == t.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # params only (stage 2 init: `init_from`) from the training checkpoint, on mesh 2
    params = io.load_params(tmp_path, cfg.model, sharding.make_mesh((2, 4, 1)))
    for a, b, t in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params), jax.tree.leaves(dst["params"])):
        assert b.sharding == t.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


KILL_DURING_SAVE = textwrap.dedent("""
    import sys, time
    import jax, numpy as np
    from molmo_jax.train.checkpointing import Checkpointer
    from data_pipelines.random_batches import RandomBatches
    ckpt = Checkpointer(sys.argv[1], every=1)
    data = RandomBatches(None, 1, 8)
    def state(seed):  # 64 MB of random floats: a save takes most of a second here
        return {"w": jax.numpy.asarray(np.random.default_rng(seed).standard_normal(1 << 24, np.float32))}
    data.set_state({"next_index": 1}); ckpt.save(1, state(1), data); ckpt.wait()
    data.set_state({"next_index": 2}); ckpt.save(2, state(2), data)
    print("saving", flush=True)
    time.sleep(120)
""")


def test_kill_during_async_save_keeps_previous_checkpoint(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout.readline().strip() == "saving"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert any(p.name.startswith("2.orbax-checkpoint-tmp") for p in tmp_path.iterdir())  # killed mid-save
    ckpt = checkpointing.Checkpointer(tmp_path, every=1)
    assert ckpt.latest_step() == 1
    data = random_batches.RandomBatches(None, 1, 8)
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restored = ckpt.restore({"w": jax.ShapeDtypeStruct((1 << 24,), jnp.float32, sharding=one_device)}, data)
    expected = np.random.default_rng(1).standard_normal(1 << 24, np.float32)
    np.testing.assert_array_equal(np.asarray(restored["w"]), expected)
    assert data.get_state() == {"next_index": 1}


def test_time_based_checkpoints(tmp_path, monkeypatch):
    now = [1000.0]  # the checkpointer's clock, moved by hand: a loaded machine cannot make it late
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    ckpt = checkpointing.Checkpointer(tmp_path, every=0, every_minutes=0.2 / 60)
    state = {"w": jnp.arange(4.0)}
    now[0] += 0.19
    assert not ckpt.save(1, state)  # 0.2 s have not passed since the start
    now[0] += 0.02
    assert ckpt.save(2, state) and not ckpt.save(3, state)  # the clock restarts at each save
    ckpt.wait()
    assert ckpt.manager.all_steps() == [2]
    ckpt.close()


def test_resume_check_names_each_differing_field_and_allows_runtime_changes(tmp_path):
    cfg = stage1.get_config("tiny")
    checkpointing.check_resume(tmp_path, checkpointing.run_settings(cfg), resuming=False)
    runtime = stage1.get_config("tiny")
    runtime.mesh = (2, -1, 1)  # another mesh reshards on restore
    runtime.model.vit.remat_policy = runtime.model.llm.remat_policy = "none"
    runtime.optim.grad_accum, runtime.checkpoint.every = 2, 1
    checkpointing.check_resume(tmp_path, checkpointing.run_settings(runtime), resuming=True)
    other = stage1.get_config("tiny")
    other.model.llm.n_layers, other.optim.lr.llm = 3, 1.0
    with pytest.raises(checkpointing.ResumeMismatch) as error:
        checkpointing.check_resume(tmp_path, checkpointing.run_settings(other), resuming=True)
    message = str(error.value)
    assert "\n" not in message and message.count("->") == 2
    assert f"model.llm.n_layers: {cfg.model.llm.n_layers} -> 3" in message
    assert f"optim.lr.llm: {cfg.optim.lr.llm} -> 1.0" in message


# ------------------------------------------------------------------------------------------ exact resume


def saving(checkpoints: Path) -> list[Path]:
    """The directories of saves in progress (Orbax renames one to its step when committed)."""
    return [p for p in checkpoints.glob("*.orbax-checkpoint-tmp*")] if checkpoints.exists() else []


# Moments of an async save at which a run gets SIGKILLed: just begun, some arrays written.
SAVE_MOMENTS = {
    "begun": lambda ckpts: bool(saving(ckpts)),
    "arrays_written": lambda ckpts: any(f.is_file() for d in saving(ckpts) for f in (d / "state").rglob("*")),
}


def run_training(workdir: Path, cache: Path, steps: int, stop_after: int | None = None,
                 sig: int = signal.SIGKILL, kill_at=None, every: int = 3):
    """experiments/train.py on the tiny config (2 devices, text-only, checkpoints every `every` steps, the
    fixture's tokenizer for the Orbax export when finished); with `stop_after`, sends `sig` once this run has
    logged that many steps (SIGTERM: then SIGINT during the save it causes); with `kill_at` (a
    `SAVE_MOMENTS` value), SIGKILLs it at that moment of its first save. Returns (exit code, stderr)."""
    cmd = [sys.executable, "-m", "experiments.train", "--config", "molmo_jax/recipes/stage1.py:tiny",
           f"--workdir={workdir}", f"--config.optim.steps={steps}", f"--config.checkpoint.every={every}",
           "--config.data.crops=0", "--config.data.seq_len=32", "--config.log_every=1", "--export=orbax",
           f"--config.data.tokenizer={TOKENIZER}"]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2",
           "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = workdir / "metrics.jsonl"
    logged = lambda: len(log.read_text().splitlines()) if log.exists() else 0
    stop_at = None if stop_after is None else logged() + stop_after
    while (stop_at is not None or kill_at is not None) and child.poll() is None:
        if kill_at is not None and kill_at(workdir / "checkpoints"):
            child.send_signal(signal.SIGKILL)
            break
        if stop_at is not None and logged() >= stop_at:
            stale = set(saving(workdir / "checkpoints"))  # left by killed runs
            child.send_signal(sig)
            if sig == signal.SIGTERM:  # a second signal while the save it causes runs
                while child.poll() is None and not set(saving(workdir / "checkpoints")) - stale:
                    time.sleep(0.001)
                child.send_signal(signal.SIGINT)
            break
        time.sleep(0.001)
    _, err = child.communicate(timeout=300)
    err = err.decode()
    if stop_after is None and kill_at is None:
        assert child.returncode == 0, err[-3000:]
    return child.returncode, err


def losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics_log.read(workdir / "metrics.jsonl")}


def test_resume_after_sigkill_during_saves_and_sigterm_is_bit_identical(tmp_path):
    """SIGKILL at several moments of an async save, then SIGTERM (+ SIGINT during its save), then a
    rerun: every restart restores the last complete checkpoint and the losses are the uninterrupted run's."""
    steps = 12
    cache = tmp_path / "jax_cache"
    run_training(tmp_path / "ref", cache, steps)
    reference = losses(tmp_path / "ref")
    assert sorted(reference) == list(range(1, steps + 1))
    assert (tmp_path / "ref" / "curves.png").exists() and list((tmp_path / "ref" / "tb").iterdir())
    assert (tmp_path / "ref" / "export" / "orbax").is_dir()

    work = tmp_path / "resumed"
    for moment in SAVE_MOMENTS.values():  # checkpoints every step: the kill lands in the first save it sees
        code, _ = run_training(work, cache, steps, kill_at=moment, every=1)
        assert code == -signal.SIGKILL
        committed = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
        assert checkpointing.Checkpointer(work / "checkpoints", every=1).latest_step() == (committed or [None])[-1]
    assert saving(work / "checkpoints")  # the kills left unfinished saves behind
    code, err = run_training(work, cache, steps, stop_after=2, sig=signal.SIGTERM)
    last_logged = json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert f"stopped at step {last_logged} of {steps}; rerun the same command to resume" in err
    assert not (work / "export").exists()  # a stopped run is not exported as if finished
    assert checkpointing.Checkpointer(work / "checkpoints", every=3).latest_step() == last_logged
    run_training(work, cache, steps)
    assert losses(work) == reference
    # the completed run's export is its last checkpoint's model, with the config and the data's tokenizer
    exported = molmo_jax.load(work / "export" / "orbax")
    cfg, params = io.load(work)
    assert exported.cfg.to_dict() | {"name": cfg.name} == cfg.to_dict() and exported.tokenizer.eos_id == 0
    jax.tree.map(np.testing.assert_array_equal, exported.params, params)


def test_metrics_log_and_event_file(tmp_path):
    assert metrics_log.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    log = metrics_log.MetricsLog(tmp_path)
    for step, loss in [(1, 3.0), (2, 2.0), (2, 1.5)]:  # step 2 re-run after a resume: last line wins
        log.write(step, {"loss": loss, "lr/llm": 1e-3})
    log.close()
    assert [(r["step"], r["loss"]) for r in metrics_log.read(tmp_path / "metrics.jsonl")] == [(1, 3.0), (2, 1.5)]
    events = next((tmp_path / "tb").iterdir()).read_bytes()
    records = []
    while events:  # TFRecord framing: length, masked crc(length), data, masked crc(data)
        n = int.from_bytes(events[:8], "little")
        records.append(events[12:12 + n])
        assert events[:12 + n + 4] == metrics_log.record(records[-1])
        events = events[12 + n + 4:]
    assert len(records) == 4 and b"brain.Event:2" in records[0] and b"lr/llm" in records[1]
