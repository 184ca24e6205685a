"""Fine-tuning on user data: the JSONL format and its validator, LoRA on the param tree, full / frozen / LoRA
training of the tiny reference model, the exports, and the README example run as written."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

import molmo_jax
from data_pipelines import factory, user_data
from fixture_cases import ROOT
from test_readme import blocks_run_by
from molmo_jax import cli, config, formatting, io, lora, sharding
from molmo_jax.cli import finetune as finetune_cli
from molmo_jax.models.molmo import Molmo, abstract_params
from molmo_jax.recipes import finetune as recipe
from molmo_jax.tokenizer import load_tokenizer
from molmo_jax.train import checkpointing, finetune, hooks, metrics_log, optim, trainable, trainer
from molmo_jax.train.trainable import Trainable

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "qwen2_7b_d"
MODEL_INPUTS = ("input_ids",) + trainer.MODEL_KEYS
SQUARES = [(12, 20), (30, 12), (44, 30), (52, 36)]  # red square centres, pixels of 64x48 images

README_EXAMPLE, = blocks_run_by("tests/test_finetune.py")  # check the file, fine-tune, ask the exports


def write_user_data(directory: Path) -> Path:
    """data/train.jsonl with four 64x48 PNGs of a red square: a two-turn dialogue and the square's point."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (x, y) in enumerate(SQUARES):
        pixels = np.full((48, 64, 3), 240, np.uint8)
        pixels[y - 4:y + 4, x - 4:x + 4] = (220, 30, 30)
        Image.fromarray(pixels).save(directory / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "points": [[x, y]], "label": "square",
                     "conversations": [{"user": "What colour is the square?", "assistant": "Red."},
                                       {"user": "Is it big?", "assistant": "No, it is small."}]})
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_user_data(tmp_path_factory.mktemp("user") / "data")


# ------------------------------------------------------------------------------------------ user data


def test_rows_become_official_examples(data_file):
    example = user_data.UserData(data_file).get(0)
    dialogue, pointing = example["message_list"]
    assert dialogue == {"messages": ["What colour is the square?", "Red.", "Is it big?", "No, it is small."],
                        "style": "demo"}
    fmt = formatting.Formatter(prompt_type="uber_model", message_formatting="role", system_prompt_kind="demo_or_style")
    _, answer, _ = fmt.get_user_prompt(pointing, rng=np.random.RandomState(0))
    x, y = SQUARES[0]
    assert answer == formatting.points_to_text([[100 * x / 64, 100 * y / 48]], 100, "square", "square")
    counted = user_data.to_example(user_data.Row(1, "", (), np.array([[1.0, 2.0]]), "dot", "point_count"),
                                   np.zeros((10, 10, 3), np.uint8))
    assert fmt.format_points(counted["message_list"][0]).endswith("shows a total of 1.")


def test_validate_reports_every_bad_row_with_its_line_number(tmp_path, data_file, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    good = json.loads(data_file.read_text().splitlines()[0])
    good["image"] = str(data_file.parent / good["image"])
    rows = [
        json.dumps(good),                                                   # 1 ok
        '{"image": "a.png", "conversations": [',                            # 2 bad JSON
        json.dumps({"conversations": [{"user": "Hi", "assistant": "Yo"}]}),   # 3 missing image
        json.dumps({**good, "image": "missing.png"}),                       # 4 image not found
        json.dumps({**good, "image": "broken.png"}),                        # 5 unreadable image
        "",                                                                 # 6 blank: ignored
        json.dumps({**good, "points": [[10, 10], [70, 5], [3, -1]]}),       # 7 two points outside 64x48
        json.dumps({**good, "conversations": [{"user": "Hi", "assistant": " "}]}),  # 8 empty turn
        json.dumps(good),                                                   # 9 ok
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n")
    report = user_data.validate(path, allow_outside_images=True)  # rows 1 and 9 name the fixture's image
    assert report.rows == 8 and report.bad_lines == [2, 3, 4, 5, 7, 8]
    messages = dict(report.problems)
    assert "bad JSON" in messages[2] and "missing image" in messages[3]
    assert "file not found" in messages[4] and "unreadable image" in messages[5]
    assert "turn 1: empty assistant" in messages[8]
    assert [m for line, m in report.problems if line == 7] == ["point 2 (70, 5) is outside the 64x48 image",
                                                               "point 3 (3, -1) is outside the 64x48 image"]
    assert cli.main(["validate-data", str(path), "--allow-outside-images"]) == 1
    out = capsys.readouterr().out
    assert all(f"line {n}:" in out for n in report.bad_lines) and "8 rows, 6 bad" in out
    assert cli.main(["validate-data", str(data_file)]) == 0


# ------------------------------------------------------------------------------------------ LoRA


def test_lora_adapters_shard_like_their_kernels_and_merge_exactly():
    cfg = recipe.get_config(str(CHECKPOINT), lora_rank=4)
    lcfg = lora.LoraConfig.from_config(cfg.lora)
    mesh = sharding.make_mesh((2, 2, 2))
    base = traverse_util.flatten_dict(sharding.param_shardings(abstract_params(cfg.model), mesh), sep="/")
    adapters = traverse_util.flatten_dict(sharding.param_shardings(lora.abstract(cfg.model, lcfg), mesh), sep="/")
    assert sorted(adapters) == [f"llm/blocks/attention/{m}/{leaf}" for m in ("query", "value")
                                for leaf in ("lora_a", "lora_b")]
    # kernel [layers, embed, heads, head_dim]: A [layers, embed, r], B [layers, r, heads, head_dim]
    for module in ("query", "value"):
        spec = tuple(base[f"llm/blocks/attention/{module}/kernel"].spec) + (None,) * 4
        assert tuple(adapters[f"llm/blocks/attention/{module}/lora_a"].spec) == spec[:2] + (None,)
        assert tuple(adapters[f"llm/blocks/attention/{module}/lora_b"].spec) == (spec[0], None) + spec[2:4]

    rng = np.random.default_rng(0)  # the merged kernel computes x W + scale (x A) B
    w, a, b = rng.standard_normal((2, 6, 3, 4)), rng.standard_normal((2, 6, 5)), rng.standard_normal((2, 5, 3, 4))
    merged = lora.apply_lora({"m": {"kernel": w}}, {"m": {"lora_a": a, "lora_b": b}}, lora.LoraConfig(5, 10.0))
    x = rng.standard_normal((7, 6))
    for layer in range(2):
        unmerged = np.einsum("td,dhk->thk", x, w[layer]) + 2.0 * np.einsum("tr,rhk->thk", x @ a[layer], b[layer])
        np.testing.assert_allclose(np.einsum("td,dhk->thk", x, np.asarray(merged["m"]["kernel"][layer])), unmerged,
                                   rtol=1e-10)


# ------------------------------------------------------------------------------------------ training


def tiny_config(data_file: Path, tmp_path: Path, lora_rank: int, lr: float):
    cfg = recipe.get_config(str(CHECKPOINT), lora_rank=lora_rank, steps=4)
    cfg.model.dtype = "float32"
    cfg.model.llm.residual_dropout = 0.0
    cfg.data.update(path=str(data_file), global_batch=2, seq_len=448)
    cfg.optim.lr.update({c: lr for c in optim.COMPONENTS})
    cfg.optim.warmup.update({c: 1 for c in optim.COMPONENTS})
    cfg.log_every = 1
    cfg.checkpoint.every = 0  # the final checkpoint only
    return cfg


def fixed_batch(cfg) -> dict[str, np.ndarray]:
    return trainer.host_batch(next(factory.make_data(cfg, load_tokenizer(cfg.init_from, cfg.model.llm.vocab_size))))


def test_user_data_takes_the_factorys_packing(tmp_path, data_file):
    """Fine-tuning batches come from `factory.make_data` like every other kind: data.pack_crops packs
    several user examples into each row (positions restart inside a row)."""
    cfg = tiny_config(data_file, tmp_path, lora_rank=0, lr=1e-3)
    tok = load_tokenizer(cfg.init_from, cfg.model.llm.vocab_size)
    plain = next(factory.make_data(cfg, tok))
    assert (plain["position_ids"] == 0).sum(-1).tolist() == [1, 1]
    cfg.data.update(seq_len=4 * 448, pack_crops=4 * config.max_total_crops(cfg.model))
    packed = next(factory.make_data(cfg, tok))
    assert (packed["position_ids"] == 0).sum() > 2 and packed["input_ids"].shape == (2, 4 * 448)


@pytest.fixture(scope="module")
def forward():
    """Jitted logits of the reference model (float32, deterministic): (params, batch) -> float32[B, T, V]."""
    apply = jax.jit(Molmo(io.load_config(CHECKPOINT)).apply)
    return lambda params, batch: np.asarray(apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS}))


def mean_loss(logits: np.ndarray, batch) -> float:
    """Mean cross entropy over the loss tokens."""
    on = batch["loss_masks"] > 0
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    labels = np.clip(batch["labels"], 0, logits.shape[-1] - 1)  # ids past the output head only where on is False
    target = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return float((lse - target)[on].mean())


def one_device():
    return sharding.make_mesh()


def by_component(params) -> dict[str, dict[str, np.ndarray]]:
    out = {c: {} for c in optim.COMPONENTS}
    for path, x in traverse_util.flatten_dict(params, sep="/").items():
        out[optim.component_of(path)][path] = np.asarray(x)
    return out


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_lora_finetune_trains_only_the_adapters_and_exports_the_merged_model(tmp_path, data_file, forward):
    """Also runs an eval hook and an export hook every 2 of the 4 steps: both see the merged model."""
    cfg = tiny_config(data_file, tmp_path, lora_rank=4, lr=3e-3)
    mesh = one_device()
    base = io.load_params(cfg.init_from, cfg.model, mesh)
    batch = fixed_batch(cfg)
    model_cfg = io.load_config(CHECKPOINT)
    every_2 = [hooks.EvalHook(2, lambda params: {"loss": mean_loss(forward(params, batch), batch)}),
               hooks.ExportHook(2, tmp_path / "steps", model_cfg, io.load_tokenizer(CHECKPOINT, model_cfg))]
    state, exports = finetune.run(cfg, tmp_path / "run", factory.make_data, mesh, every_2)

    assert_identical(traverse_util.flatten_dict(state["frozen"], sep="/"), traverse_util.flatten_dict(base, sep="/"))
    adapters = traverse_util.flatten_dict(state["params"], sep="/")
    assert all(k.endswith(("/lora_a", "/lora_b")) for k in adapters)
    assert all(np.abs(np.asarray(v)).max() > 0 for k, v in adapters.items() if k.endswith("lora_b"))
    unmerged = forward(trainable.assemble(state["frozen"], state["params"], lora.LoraConfig.from_config(cfg.lora)),
                       batch)
    assert mean_loss(unmerged, batch) < mean_loss(forward(base, batch), batch) - 1e-3

    merged = jax.device_get(Trainable.of(cfg).model_params(state))
    assert sorted(exports) == ["hf_release", "orbax"]
    for path in exports.values():  # both load back to exactly the merged params: the unmerged model's logits
        loaded = molmo_jax.load(path)
        jax.tree.map(np.testing.assert_array_equal, loaded.params, merged)
        np.testing.assert_allclose(forward(loaded.params, batch), unmerged, atol=1e-5, rtol=1e-5)
    rows = metrics_log.read(tmp_path / "run" / "metrics.jsonl")
    assert [("eval/loss" in r) for r in rows] == [False, True, False, True]
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["2", "4"]
    jax.tree.map(np.testing.assert_array_equal, molmo_jax.load(tmp_path / "steps" / "4" / "orbax").params, merged)
    assert rows[3]["eval/loss"] == mean_loss(forward(merged, batch), batch)
    at_step_2 = molmo_jax.load(tmp_path / "steps" / "2" / "orbax").params
    assert rows[1]["eval/loss"] == mean_loss(forward(at_step_2, batch), batch) != rows[3]["eval/loss"]

    # the workdir now resumes only with its own settings: one line naming each differing field
    other = tiny_config(data_file, tmp_path, lora_rank=8, lr=3e-3)
    other.freeze = ("connector", "llm")
    with pytest.raises(checkpointing.ResumeMismatch) as error:
        finetune.run(other, tmp_path / "run", factory.make_data, mesh)
    message = str(error.value)
    assert "\n" not in message and "lora.rank: 4 -> 8" in message
    assert "freeze: ['connector', 'vit', 'llm'] -> ['connector', 'llm']" in message
    assert message.count("->") == 2
    # a workdir without the record (an older run): the restore itself fails, in one line
    (tmp_path / "run" / checkpointing.SETTINGS_FILE).unlink()
    with pytest.raises(checkpointing.ResumeMismatch, match=r"step 4 does not fit this run's train state") as error:
        finetune.run(other, tmp_path / "run", factory.make_data, mesh)
    assert "\n" not in str(error.value) and len(str(error.value)) < 600


def test_full_finetune_with_frozen_vit_changes_only_connector_and_llm(tmp_path, data_file, forward):
    cfg = tiny_config(data_file, tmp_path, lora_rank=0, lr=1e-3)
    cfg.freeze = ("vit",)
    cfg.optim.steps = 3
    cfg.export = ()
    mesh = one_device()
    base = io.load_params(cfg.init_from, cfg.model, mesh)
    batch = fixed_batch(cfg)
    state, _ = finetune.run(cfg, tmp_path / "run", factory.make_data, mesh)

    trained = Trainable.of(cfg).model_params(state)
    before, after = by_component(base), by_component(trained)
    assert "vit" not in state["params"]
    assert_identical(after["vit"], before["vit"])
    for component in ("connector", "llm"):
        changed = {k: not np.array_equal(after[component][k], before[component][k]) for k in before[component]}
        assert all(changed.values()), [k for k, c in changed.items() if not c]
    assert mean_loss(forward(trained, batch), batch) < mean_loss(forward(base, batch), batch) - 1e-3


def test_sigterm_stops_finetune_with_a_checkpoint_and_no_export(tmp_path, data_file, capsys):
    """A real SIGTERM (sent to this process once a step is logged) during `molmo-jax finetune`."""
    workdir = tmp_path / "run"

    def terminate_after_first_step():
        while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_first_step, daemon=True).start()
    code = cli.main(["finetune", "--checkpoint", str(CHECKPOINT), "--data", str(data_file), "--workdir",
                     str(workdir), "--lora-rank", "4", "--steps", "50", "--batch-size", "2", "--seq-len", "448",
                     "--checkpoint-every", "0", "--mesh", "fsdp=1"])
    step = checkpointing.Checkpointer(workdir / "checkpoints", every=0).latest_step()
    assert code == 128 + signal.SIGTERM and 1 <= step < 50
    assert capsys.readouterr().err.splitlines()[-1] == f"stopped at step {step} of 50; rerun the same command to resume"
    assert not (workdir / "export").exists()


def test_periodic_flags_are_checked_before_training(tmp_path, data_file, capsys):
    """`molmo-jax finetune --eval-every` / `--eval-task` reach `hooks.Periodic`: a bad pair fails in one
    line before any step (the hooks themselves run in test_train_data's PixMo-lite run)."""
    workdir = tmp_path / "run"
    base = ["finetune", "--checkpoint", str(CHECKPOINT), "--data", str(data_file), "--workdir", str(workdir)]
    assert cli.main(base + ["--eval-every", "5"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "error: periodic evaluation needs both an interval (eval every N steps) and its tasks")
    assert cli.main(base + ["--eval-every", "5", "--eval-task", "nowhere"]) == 1
    assert "eval task nowhere: unknown" in capsys.readouterr().err
    assert cli.main(base + ["--mesh", "fsdp=16"]) == 1
    assert capsys.readouterr().err.strip().endswith("does not fit 8 devices")
    assert not (workdir / "checkpoints").exists()


def test_checkpoint_interval_defaults_and_flags():
    assert recipe.get_config(str(CHECKPOINT), steps=1000).checkpoint.every == 100
    assert recipe.get_config(str(CHECKPOINT), steps=50).checkpoint.every == 5
    args = cli.build_parser().parse_args(["finetune", "--checkpoint", str(CHECKPOINT), "--data", "x.jsonl",
                                          "--workdir", "w", "--checkpoint-every", "7",
                                          "--checkpoint-every-minutes", "30"])
    cfg = finetune_cli._config(args)
    assert (cfg.checkpoint.every, cfg.checkpoint.every_minutes) == (7, 30.0)
    assert cfg.mesh == (1, -1, 1)  # fsdp over every device
    args.mesh = "data=2,fsdp=4"
    assert finetune_cli._config(args).mesh == (2, 4, 1, 1)


# ------------------------------------------------------------------------------------------ README example


def test_readme_example_runs_as_written(tmp_path):
    """The README commands in a shell, on a tiny checkpoint (linked as Molmo-7B-D-0924) and file, with
    fewer steps and a smaller batch (one CPU device, fast XLA compiles)."""
    write_user_data(tmp_path / "data")
    (tmp_path / "Molmo-7B-D-0924").symlink_to(CHECKPOINT)
    script = README_EXAMPLE.replace("--steps 1000", "--steps 2").replace("--batch-size 16", "--batch-size 2")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=1"}  # conftest's
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    validated, trained, predicted = re.fullmatch(
        r"(.*\n)(wrote hf_release checkpoint to runs/lora/export/hf_release\n"
        r"wrote orbax checkpoint to runs/lora/export/orbax\n)(.*)", result.stdout, re.DOTALL).groups()
    assert validated == "data/train.jsonl: 4 rows, 0 bad\n"
    half = len(predicted) // 2
    assert predicted and predicted[:half] == predicted[half:]  # both exports give the same greedy answer


def test_pixmo_lite_mix_draws_the_lite_recipes_scenes():
    """--mix-pixmo-lite mixes in the scenes the PixMo-lite recipe trains on (its image size and style),
    drawn with the fine-tuning data seed."""
    from data_pipelines import synthetic
    from molmo_jax.recipes import lite
    d = recipe.get_config(str(CHECKPOINT)).data
    expected = {**lite.data_fields(), "pixmo_lite_size": 10_000, "pixmo_lite_seed": d.seed}
    assert {k: d[k] for k in expected} == expected
    assert all(s.style == synthetic.config_style(d) and s.seed == d.seed
               for s in synthetic.config_sources(d).values())


def test_experiment_config_arg():
    cfg = recipe.get_config(f"{CHECKPOINT},lora=8")
    assert cfg.lora.rank == 8 and cfg.freeze == tuple(optim.COMPONENTS) and cfg.init_from == str(CHECKPOINT)
    assert recipe.get_config(str(CHECKPOINT)).lora.rank == 0


def test_validate_names_each_defect_class_and_goes_on(tmp_path, data_file):
    """Truncated images, non-UTF-8 lines, paths leaving the folder, URL images not downloaded, numbers as
    strings / booleans as points and wrong types: each named with its line; the rows after it are checked."""
    directory = data_file.parent
    png = (directory / "images" / "0.png").read_bytes()
    (directory / "truncated.png").write_bytes(png[:len(png) // 2])
    (tmp_path / "outside.png").write_bytes(png)
    good = json.loads(data_file.read_text().splitlines()[0])
    url = "http://127.0.0.1:9/never.png"
    rows = [
        json.dumps({**good, "image": "truncated.png"}),                            # 1
        b"\xff\xfe not utf-8",                                                     # 2
        json.dumps({**good, "image": os.path.relpath(tmp_path / "outside.png", directory)}),  # 3
        json.dumps({**good, "image": url}),                                        # 4
        json.dumps({**good, "points": [["12", 20], [True, 3]]}),                   # 5
        json.dumps({**good, "image": 5, "label": 3, "conversations": "hi"}),       # 6
        json.dumps(good),                                                          # 7 ok
    ]
    path = directory / "defects.jsonl"
    path.write_bytes(b"\n".join(r if isinstance(r, bytes) else r.encode() for r in rows) + b"\n")
    report = user_data.validate(path)
    assert report.rows == 7 and report.bad_lines == [1, 2, 3, 4, 5, 6]
    by_line = {n: [m for line, m in report.problems if line == n] for n in report.bad_lines}
    assert "truncated" in by_line[1][0].lower()
    assert by_line[2] == ["not UTF-8 text (byte 1 of the line is b'\\xff')"]
    assert "outside the data file's folder" in by_line[3][0] and "--allow-outside-images" in by_line[3][0]
    assert url in by_line[4][0] and "--download" in by_line[4][0]
    assert by_line[5] == ['point 1: x is a string ("12"), not a number', "point 2: x is a boolean, not a number"]
    assert by_line[6] == ["image must be a string (a path or an http(s) URL), got an integer",
                          "conversations must be a list of turns, got a string",
                          "label must be a string, got an integer"]
    assert 3 not in user_data.validate(path, allow_outside_images=True).bad_lines


def test_validate_with_the_model_names_rows_without_an_answer_token(tmp_path, data_file):
    cfg = recipe.get_config(str(CHECKPOINT))
    tok = load_tokenizer(cfg.init_from, cfg.model.llm.vocab_size)
    good = json.loads(data_file.read_text().splitlines()[0])
    rows = [dict(good, points=[[1, 1]]), dict(good, conversations=[{"user": "why " * 300, "assistant": "Red."}])]
    del rows[1]["points"], rows[1]["label"]
    path = data_file.parent / "lengths.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg.data.path, cfg.data.seq_len = str(path), 100_000
    assert factory.validate_user_data(cfg, tok).ok
    cfg.data.seq_len = 400
    report = factory.validate_user_data(cfg, tok)
    assert report.bad_lines == [2], report.summary()
    assert "no answer token within the sequence length 400" in report.problems[0][1]
