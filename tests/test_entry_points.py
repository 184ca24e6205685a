"""What every entry point shares (molmo_jax/cli/entry_points.py): --import of user modules (a registered
pooling reaches config validation, `molmo-jax convert` and `experiments.train`; the README's pooling trains,
exports and reloads), one-line errors with --debug before or after the subcommand, --version, and where a
released model comes from."""
from __future__ import annotations

import re
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from fixture_cases import ROOT
from molmo_jax import cli, config, conversion, io
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.cli import entry_points
from molmo_jax.models import connector
from molmo_jax.models.molmo import abstract_params

REPO = Path(__file__).resolve().parents[1]
# The README's user module (section "Ablate the connector"): registers the parameter-free pooling "max".
USER_MODULE = re.search(r"<!-- readme-test: file my_poolings.py -->\n```python\n(.*?)```",
                        (REPO / "README.md").read_text(), re.S)[1]


def run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def forget_max_pooling(monkeypatch):
    """Whatever registers "max" during the test is undone afterwards; calling the fixture's value undoes it
    at once."""
    monkeypatch.setattr(connector, "POOLINGS", dict(connector.POOLINGS))
    connector.POOLINGS.pop("max", None)
    return lambda: connector.POOLINGS.pop("max", None)


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "my_poolings.py"
    path.write_text(USER_MODULE)
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("molmo-jax ")


@pytest.mark.parametrize("before", [True, False])
def test_debug_before_or_after_the_subcommand_shows_the_traceback(before, capsys):
    argv = ["predict", "--checkpoint", "Molmo-7B-D-0924", "--prompt", "x"]
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug"] + argv if before else argv + ["--debug"])


def test_released_model_name_says_which_hub_repo_to_download(capsys):
    rc, _, err = run(["predict", "--checkpoint", "Molmo-72B-0924", "--prompt", "x"], capsys)
    assert rc == 1
    assert err.splitlines() == ["molmo-jax predict: error: Molmo-72B-0924: no such directory; Molmo-72B-0924 is "
                                "the Hugging Face hub repo allenai/Molmo-72B-0924: `hf download "
                                "allenai/Molmo-72B-0924 --local-dir Molmo-72B-0924` (huggingface_hub)"]


def test_missing_import_is_one_line(capsys):
    rc, _, err = run(["--import", "no_such_module_here", "predict", "--checkpoint", ROOT, "--prompt", "x"], capsys)
    assert rc == 1 and len(err.splitlines()) == 1
    assert "--import no_such_module_here: cannot import it" in err


def test_registered_pooling_reaches_convert_only_with_import(tmp_path, user_module, forget_max_pooling, capsys):
    """A checkpoint whose config names pooling "max": `convert` rejects it in one line, and with
    --import of the module that registers "max" (before or after the subcommand) converts it."""
    entry_points.import_extensions([str(user_module)])
    cfg = config.tiny("qwen2")
    cfg.connector.pooling = "max"
    cfg = config.validate(cfg)
    ckpt = tmp_path / "max_ckpt"
    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.unbox(abstract_params(cfg)))
    io.save(zeros, cfg, io.load_tokenizer(ROOT / "qwen2_7b_d", cfg), ckpt, "native")
    forget_max_pooling()
    convert = ["convert", "--checkpoint", ckpt, "--to", "orbax"]
    rc, _, err = run(convert + ["--out", tmp_path / "a"], capsys)
    assert rc == 1 and len(err.splitlines()) == 1 and "connector.pooling='max' is invalid" in err
    assert "--import" in err
    rc, out, _ = run(["--import", user_module] + convert + ["--out", tmp_path / "b"], capsys)
    assert rc == 0 and "wrote orbax" in out
    rc, out, _ = run(convert + ["--out", tmp_path / "c", "--import", user_module], capsys)
    assert rc == 0 and "wrote orbax" in out


def train_main(argv, monkeypatch) -> int:
    """Runs `python -m experiments.train *argv` in-process (config_flags reads overrides from sys.argv)."""
    from experiments import train
    argv = ["experiments.train"] + argv
    monkeypatch.setattr("sys.argv", argv)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        try:
            train.main([])
        except SystemExit as exit_:
            return exit_.code
    return 0


def test_train_errors_are_one_line_and_import_registers_the_pooling(tmp_path, user_module, forget_max_pooling,
                                                                    capsys, monkeypatch):
    """`experiments.train --config.model.connector.pooling=max` ends in one line naming the field, not a
    KeyError; with --import the config validates (the run then fails later on a bad data kind, also in
    one line)."""
    argv = ["--config", "molmo_jax/recipes/stage1.py:tiny", f"--workdir={tmp_path / 'w'}",
            "--config.model.connector.pooling=max"]
    assert train_main(argv, monkeypatch) == 1
    assert capsys.readouterr().err.splitlines() == [
        "experiments.train: error: config field connector.pooling='max' is invalid: allowed: ('attention_meanq', "
        "'attention', 'attention_2wide', 'stack', 'none') (add one with connector.register_pooling in a module "
        "given to --import)"]
    assert train_main(argv + [f"--import={user_module}", "--config.data.kind=nowhere"], monkeypatch) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["experiments.train: error: data.kind='nowhere' is unknown; known: synthetic, pixmo_lite, pixmo, user"]
    assert "max" in connector.POOLINGS


def test_train_periodic_flags_reach_the_run(tmp_path, capsys, monkeypatch):
    """--eval_every / --eval_task / --export_every are checked before training, in one line each."""
    argv = ["--config", "molmo_jax/recipes/stage2.py:tiny", f"--workdir={tmp_path / 'w'}"]
    assert train_main(argv + ["--eval_every=5"], monkeypatch) == 1
    assert capsys.readouterr().err.splitlines() == [
        "experiments.train: error: periodic evaluation needs both an interval (eval every N steps) and its tasks"]
    assert train_main(argv + ["--export_every=5"], monkeypatch) == 1
    assert capsys.readouterr().err.splitlines() == [
        "experiments.train: error: periodic evaluation and export need the run's tokenizer: set data.tokenizer"]
    assert not (tmp_path / "w" / "checkpoints").exists()


def random_params(cfg, seed: int = 0):
    """Params of `cfg` drawn from N(0, 0.02^2) in numpy (no init program to compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0, 0.02, x.shape).astype(x.dtype), nn.unbox(abstract_params(cfg)))


def save(params, cfg, path, fmt):
    io.save(params, cfg, io.load_tokenizer(ROOT / "qwen2_7b_d", cfg), path, fmt)


def test_readme_pooling_trains_exports_and_reloads_with_equal_params(tmp_path, user_module, forget_max_pooling,
                                                                    monkeypatch):
    """The README's "max" pooling: `experiments.train --import my_poolings` trains the tiny stage 1 with it
    (from random params in a native checkpoint, so only the step compiles) and exports the native format;
    the export names the pooling and reloads to the params of the run's last checkpoint."""
    from molmo_jax.recipes import stage1
    entry_points.import_extensions([str(user_module)])
    cfg = stage1.get_config("tiny").model
    cfg.connector.pooling = "max"
    initial = random_params(config.validate(cfg))
    save(initial, cfg, tmp_path / "init", "native")
    workdir = tmp_path / "s1_max"
    argv = ["--config", "molmo_jax/recipes/stage1.py:tiny", f"--workdir={workdir}", f"--import={user_module}",
            "--config.model.connector.pooling=max", "--config.optim.steps=2", "--config.mesh=(1,1,1)",
            "--export=native",
            f"--config.init_from={tmp_path / 'init'}", f"--config.data.tokenizer={ROOT / 'qwen2_7b_d'}"]
    assert train_main(argv, monkeypatch) == 0
    cfg, exported = io.load(workdir / "export" / "native")
    assert cfg.connector.pooling == "max"
    _, trained = io.load(workdir, cfg)
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(trained), nn.unbox(exported))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), nn.unbox(exported), initial))
    assert any(moved)  # it trained


class GatedMax(nn.Module):
    """A pooling with a parameter: the window max times a learned per-channel gate (a plain `self.param`,
    without logical axes: replicated)."""
    cfg: object

    @nn.compact
    def __call__(self, windows):
        gate = self.param("gate", nn.initializers.ones, (windows.shape[-1],))
        return windows.max(axis=1) * gate


def gated_max_model(monkeypatch, **spec):
    """(config, random params) of a tiny model with pooling "gated_max" registered with `spec`."""
    monkeypatch.setattr(connector, "POOLINGS", dict(connector.POOLINGS))
    connector.register_pooling("gated_max", lambda cfg, name: GatedMax(cfg, name=name), **spec)
    cfg = config.tiny("qwen2")
    cfg.connector.pooling = "gated_max"
    cfg = config.validate(cfg)
    return cfg, random_params(cfg)


def test_pooling_export_rules_round_trip_its_params(tmp_path, monkeypatch):
    rules = lambda cfg: [conversion.rule("vision_backbone.image_pooling_2d.gate", "connector/pooling/gate",
                                         conversion.identity())]
    cfg, params = gated_max_model(monkeypatch, export_rules=rules)
    save(params, cfg, tmp_path / "native", "native")
    _, reloaded = io.load(tmp_path / "native")
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(reloaded), nn.unbox(params))
    assert np.asarray(reloaded["connector"]["pooling"]["gate"]).std() > 0


def test_export_names_a_pooling_param_no_rule_covers(tmp_path, monkeypatch, capsys):
    """Without export rules, `io.save` and `molmo-jax export` refuse in one line naming the parameter,
    rather than writing a model without it."""
    cfg, params = gated_max_model(monkeypatch)
    message = ("no export rule maps params ['connector/pooling/gate'] to official names (pooling 'gated_max' "
               "needs export_rules in connector.register_pooling)")
    with pytest.raises(CheckpointError) as error:
        save(params, cfg, tmp_path / "native", "native")
    assert str(error.value) == message
    save(params, cfg, tmp_path / "orbax", "orbax")  # Orbax keeps our param tree: no rules needed
    rc, _, err = run(["export", "--checkpoint", tmp_path / "orbax", "--to", "hf_release", "--out", tmp_path / "hf"],
                     capsys)
    assert rc == 1 and err.splitlines() == [f"molmo-jax export: error: {message}"]
