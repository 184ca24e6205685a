"""Training metrics: one JSON line per step, TensorBoard event files, a PNG of the curves at the end.

Every file goes through `molmo_jax.paths`, so the logs may live in a gs:// workdir.
TensorBoard: `tensorboardX` when installed (local logdirs), otherwise `EventWriter`, a ~40-line writer of the TF event
format (length-prefixed records with masked CRC-32C, hand-encoded `Event{wall_time, step, summary}`
protos holding `simple_value` scalars) that TensorBoard reads directly.
"""
from __future__ import annotations

import io
import json
import socket
import struct
import time
from typing import Iterable, Mapping

from etils import epath

from molmo_jax import paths

# ------------------------------------------------------------------------------------------ TF events


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, **fields: bytes) -> bytes:
    """Serialized tensorflow.Event: wall_time (1, double), step (2, int64), then the given fields."""
    return b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step) + b"".join(fields.values())


def _scalar_summary(scalars: Mapping[str, float]) -> bytes:
    """Summary{value: [Value{tag (1), simple_value (2, float)}]} as Event field 5."""
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                      for tag, v in scalars.items())
    return _field(5, values)


def record(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked crc of it, data, masked crc of data."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))


class EventWriter:
    """Writes scalar summaries to `<logdir>/events.out.tfevents.<time>.<host>`."""

    def __init__(self, logdir: epath.PathLike):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = paths.AppendFile(epath.Path(logdir) / name)
        self._file.write(record(_event(0, version=_field(3, b"brain.Event:2"))))

    def add_scalars(self, step: int, scalars: Mapping[str, float]):
        self._file.write(record(_event(step, summary=_scalar_summary(scalars))))

    def flush(self, force: bool = False):
        self._file.flush(force)

    def close(self):
        self._file.close()


class _TensorboardX:
    def __init__(self, logdir):
        from tensorboardX import SummaryWriter
        self._writer = SummaryWriter(str(logdir))

    def add_scalars(self, step, scalars):
        for tag, v in scalars.items():
            self._writer.add_scalar(tag, v, step)

    def flush(self, force: bool = False):
        self._writer.flush()

    def close(self):
        self._writer.close()


def tensorboard_writer(logdir):
    if paths.is_remote(logdir):
        return EventWriter(logdir)
    try:
        return _TensorboardX(logdir)
    except ImportError:
        return EventWriter(logdir)


# --------------------------------------------------------------------------------------- the logger


class MetricsLog:
    """Appends `{"step": s, **metrics}` lines to `<workdir>/metrics.jsonl` and TB scalars to `<workdir>/tb`.

    Only process 0 writes. Appending keeps the lines of a run that was interrupted and resumed; `read`
    keeps the last line of each step.
    """

    def __init__(self, workdir: epath.PathLike, enabled: bool = True):
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            self._jsonl = paths.AppendFile(self.path)
            self._tb = tensorboard_writer(epath.Path(workdir) / "tb")

    def write(self, step: int, metrics: Mapping[str, float]):
        if not self.enabled:
            return
        self._jsonl.write((json.dumps({"step": step, **metrics}) + "\n").encode())
        self._tb.add_scalars(step, metrics)

    def flush(self, force: bool = False):
        """Writes the buffered lines; a remote log is rewritten at most every `paths.REWRITE_INTERVAL_S`
        unless `force`."""
        if self.enabled:
            self._jsonl.flush(force)
            self._tb.flush(force)

    def close(self):
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read(path: epath.PathLike) -> list[dict]:
    """The metric lines of a metrics.jsonl, one per step (the last written wins), sorted by step."""
    by_step = {}
    for line in epath.Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def plot(rows: Iterable[Mapping[str, float]], out: epath.PathLike):
    """PNG with one panel per metric family: loss, learning rates, grad norms, throughput."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    panels = {"loss": ("loss", "ce_loss", "z_loss"), "learning rate": "lr/", "grad norm": "grad_norm/",
              "tokens/s": ("tokens_per_s",)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    steps = [r["step"] for r in rows]
    for ax, (title, keys) in zip(axes, panels.items()):
        names = sorted(k for k in rows[0] if k.startswith(keys)) if isinstance(keys, str) else keys
        for name in names:
            if name in rows[0]:
                ax.plot(steps, [r.get(name, float("nan")) for r in rows], label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    epath.Path(out).write_bytes(png.getvalue())
