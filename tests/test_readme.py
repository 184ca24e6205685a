"""The README is a tested contract: its generated tables are up to date, and every ```bash and ```python
block runs, top to bottom, on tiny stand-ins.

The stand-ins are the `SUBSTITUTIONS` below (the README points here): released model names become the
tiny reference fixture, released configs the tiny config (on one device), step counts and batches a couple
of steps, remote and absolute paths a scratch directory, the main job and PixMo-lite's recipe their smoke
forms (`--arg smoke`, `lite-smoke`). A block
preceded by `<!-- readme-test: file NAME -->` is written to NAME (e.g. the user module that registers a
pooling) instead of run; one preceded by `<!-- readme-test: offline REASON -->` needs the network and is
left out; one preceded by `<!-- readme-test: run by TEST_FILE -->` is run as written there (with checks of
its output; `blocks_run_by`), not here; the ```json example becomes data/train.jsonl with its image, which
`molmo-jax validate-data` must pass.

`molmo-jax` commands, `python -m experiments.train` and Python blocks run in this process (one XLA
compilation cache for them all); `bash experiments/*.sh` in a subprocess. Every command must exit 0.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from fixture_cases import ROOT as FIXTURES
from test_entry_points import train_main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FIXTURE = FIXTURES / "qwen2_7b_d"
IMAGE = FIXTURE / "cases" / "pointing" / "image.png"

# (regex, replacement) applied in order to every block; {work} is the scratch directory, {fixture} the tiny
# reference model (config, weights, tokenizer).
SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    (r"(stage[12]\.py:)(?!lite)[\w.-]+", r"\1tiny"),  # released training configs -> the tiny one
    (r"(stage[12]\.py:lite)[\w-]*", r"\1-smoke"),  # PixMo-lite's: its 2-step form
    (r" --config\.optim\.steps=\d+", ""),
    (r" --config\.init\.(vit|llm)=\S+", ""),  # pretrained towers: the tiny config starts them at random
    # ... for 2 steps, on one device: 8 simulated devices on 2 cores make every collective a rendezvous of
    # 8 threads (a step 5x one device's); the sharded trainer is tested in test_train / test_multihost
    (r"(stage[12]\.py:tiny)", r"\1 --config.optim.steps=2 --config.mesh=(1,1,1)"),
    (r"(?<![\w:/.-])Molmo-7B-D-0924/?", "{fixture}"),  # a released model -> the tiny fixture
    (r"(gs://bucket)?/models/Qwen2-7B", "{fixture}"),  # its tokenizer
    (r"gs://bucket/", "{work}/bucket/"),
    (r"(?<![\w.])/(data|tmp)/", r"{work}/\1/"),
    (r"--steps \d+", "--steps 2"),
    (r"--batch-size \d+", "--batch-size 8"),  # the tests see 8 CPU devices: one row each
    (r"(molmo-jax eval .*--data-dir evaldata)", r"\1 --n 1 --batch-size 1 --max-new-tokens 4 --max-crops 4"),
    (r"bash experiments/run_main\.sh", "bash experiments/run_main.sh --arg smoke --workdir {work}/runs/main"),
    (r"bash experiments/run_tests\.sh",
     "TESTS=tests/test_plan.py TEST_WORKERS=0 bash experiments/run_tests.sh -k parse_mesh"),
)

FENCE = re.compile(r"(?:<!-- readme-test: (?:file (?P<file>\S+)|offline (?P<offline>.+?)|run by (?P<runner>\S+))"
                   r" -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, body, file name or None) of every fenced block this test runs, in order."""
    return [(m["lang"], m["body"], m["file"]) for m in FENCE.finditer(text) if not (m["offline"] or m["runner"])]


def blocks_run_by(test_file: str) -> list[str]:
    """The bodies of the README blocks marked `<!-- readme-test: run by TEST_FILE -->`."""
    return [m["body"] for m in FENCE.finditer(README.read_text()) if m["runner"] == test_file]


def test_only_network_blocks_are_left_out():
    """A block marked `<!-- readme-test: offline REASON -->` needs the network (the hub, image URLs), which
    tests do not have; it is the only kind not run, and there is one. A block marked `run by TEST_FILE` is
    read from the README by that test."""
    text = README.read_text()
    reasons = [m["offline"] for m in FENCE.finditer(text) if m["offline"]]
    assert reasons == ["needs the Hugging Face hub and the image URLs"]
    runners = {m["runner"] for m in FENCE.finditer(text) if m["runner"]}
    assert runners == {"tests/test_finetune.py"}
    assert all(f'blocks_run_by("{runner}")' in (REPO / runner).read_text() for runner in runners)


def substitute(text: str, work: Path) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return text.replace("{work}", str(work)).replace("{fixture}", str(FIXTURE))


def commands(body: str) -> list[str]:
    """The commands of a bash block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not
            line.lstrip().startswith("#")]


def run_command(command: str, monkeypatch) -> int:
    """Runs one README command; returns its exit status."""
    argv = shlex.split(command)
    env = {}
    while argv and re.fullmatch(r"\w+=.*", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    if argv[0] == "molmo-jax":
        from molmo_jax import cli
        return cli.main(argv[1:])
    if argv[:3] == ["python", "-m", "experiments.train"]:
        return train_main(argv[3:], monkeypatch)
    if argv[:2] == ["python", "-m"]:
        return importlib.import_module(argv[2]).main(argv[3:]) or 0
    return subprocess.run(argv, cwd=REPO, env={**_environ(), **env}, timeout=600).returncode


def _environ() -> dict[str, str]:
    import os
    return {**os.environ, "PYTHONPATH": str(REPO)}


def write_user_data(body: str, work: Path):
    """The README's fine-tuning example line as data/train.jsonl, its images from the fixture."""
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / "train.jsonl").write_text(body)
    for name in re.findall(r'"image": "([^"]+)"', body):
        (work / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(IMAGE, work / "data" / name)


def write_eval_data(work: Path):
    """evaldata/: every benchmark in its published layout (tests/eval_set_writers.py), and prefs.jsonl: a few
    pairwise preferences in the Chatbot Arena format."""
    import eval_set_writers
    eval_set_writers.write_and_build(work / "evaldata")
    rows = [dict(model_a="big", model_b="small", winner="model_a"), dict(model_a="small", model_b="big",
            winner="tie"), dict(model_a="small", model_b="big", winner="model_b")] * 3
    (work / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_generated_tables_are_up_to_date():
    sys.path.insert(0, str(REPO / "tools"))
    import readme_tables
    text = README.read_text()
    assert sorted(m["name"] for m in readme_tables.BLOCK.finditer(text)) == sorted(readme_tables.TABLES)
    assert readme_tables.stale(text) == [], "run python tools/readme_tables.py"


def test_every_block_runs(tmp_path, monkeypatch, capsys):
    from molmo_jax.models import connector
    monkeypatch.setattr(connector, "POOLINGS", dict(connector.POOLINGS))  # what the README registers is undone
    monkeypatch.delitem(sys.modules, "my_poolings", raising=False)  # the README's module, fresh (it registers)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("experiments", "molmo_jax", "tests"):  # molmo_jax: the recipe files --config names
        (tmp_path / name).symlink_to(REPO / name)
    Image.open(IMAGE).convert("RGB").save(tmp_path / "cat.jpg")
    write_eval_data(tmp_path)
    ran, failed = [], []
    for lang, body, file in blocks(README.read_text()):
        if lang != "bash":
            body = substitute(body, tmp_path)
        if file:
            (tmp_path / file).write_text(body)
        elif lang == "json":  # the fine-tuning example line: a valid data file (the commands: test_finetune.py)
            write_user_data(body, tmp_path)
            ran.append("molmo-jax validate-data data/train.jsonl")
            if run_command(ran[-1], monkeypatch) != 0:
                failed.append(f"the ```json example is not valid: {capsys.readouterr().out[-2000:]}")
        elif lang == "python":
            exec(compile(body, "README.md", "exec"), {"__name__": "readme"})
            ran.append(body.splitlines()[0])
        elif lang == "bash":
            for command in commands(body):
                command = substitute(command, tmp_path)  # on whole commands: a flag may sit on a continuation line
                capsys.readouterr()
                status = run_command(command, monkeypatch)
                ran.append(command)
                if status != 0:
                    failed.append(f"exit status {status}: {command}\n{capsys.readouterr().err[-2000:]}")
    assert not failed, "\n".join(failed)
    assert len(ran) >= 15, ran
