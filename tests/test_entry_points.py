"""What every entry point shares (molmo_jax/entry_points.py): --import of user modules (a registered
pooling reaches config validation, `molmo-jax convert` and `experiments.train`), one-line errors with
--debug before or after the subcommand, --version, and where a released model comes from."""
from __future__ import annotations


import flax.linen as nn
import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from fixture_cases import ROOT
from molmo_jax import cli, config, entry_points, io
from molmo_jax.models import connector
from molmo_jax.models.molmo import abstract_params

USER_MODULE = '''
import flax.linen as nn
from molmo_jax.models.connector import register_pooling


class MaxPool(nn.Module):
    cfg: object

    def __call__(self, windows):
        return windows.max(axis=1)


register_pooling("max", lambda cfg, name: MaxPool(cfg, name=name))
'''


def run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def forget_max_pooling(monkeypatch):
    """Whatever registers "max" during the test is undone afterwards; calling the fixture's value undoes it
    at once."""
    types = config.POOLING_TYPES
    monkeypatch.setattr(config, "POOLING_TYPES", types)
    monkeypatch.setitem(connector.POOLINGS, "max", None)
    del connector.POOLINGS["max"]

    def forget():
        config.POOLING_TYPES = types
        connector.POOLINGS.pop("max", None)
    return forget


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
