"""Paths that may be local or in object storage (gs://), through `etils.epath` (gcsfs serves gs://).

Objects cannot be appended to: `AppendFile` appends to a local file in place and rewrites a remote one
whole on `flush` (at most every `REWRITE_INTERVAL_S`) and on `close`. A missing bucket surfaces from
gcsfs as e.g. `FileNotFoundError: b/bucket/o`; `require_bucket` names the path instead.
"""
from __future__ import annotations

import glob as globlib
import os
import time

from etils import epath

# A remote AppendFile is rewritten whole at most this often unless forced (a long run's metrics.jsonl grows
# to megabytes); the trainer forces it at each checkpoint, so a kill loses only rows a resume logs again.
REWRITE_INTERVAL_S = 30.0


def is_remote(path: epath.PathLike) -> bool:
    """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: epath.PathLike) -> epath.Path:
    """epath.Path of `path`, made absolute when local (Orbax needs absolute paths; a URL already is)."""
    path = epath.Path(path)
    return path if is_remote(path) else path.absolute()


def require_bucket(path: epath.PathLike, what: str = "path") -> None:
    """Raises FileNotFoundError naming `path` when it is remote and its bucket does not exist or cannot
    be reached (credentials, network, STORAGE_EMULATOR_HOST)."""
    if not is_remote(path):
        return
    scheme, rest = os.fspath(path).split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    try:
        found = epath.Path(bucket).exists()
    except Exception as e:  # gcsfs raises OSError, google.auth or aiohttp errors for an unreachable store
        raise FileNotFoundError(f"{what} {path}: cannot reach bucket {bucket} ({type(e).__name__}: {e})") from e
    if not found:
        raise FileNotFoundError(f"{what} {path}: bucket {bucket} does not exist or is not accessible")


class AppendFile:
    """A file opened for appending (binary): local files in place, remote ones rewritten on `flush`.

    A remote file keeps what it held before (e.g. the metrics of a run that is resumed).
    """

    _written_at = -float("inf")  # time.monotonic() of the last rewrite of a remote file

    def __init__(self, path: epath.PathLike):
        self.path = epath.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_remote(self.path):
            self._file = None
            self._content = bytearray(self.path.read_bytes() if self.path.exists() else b"")
        else:
            self._file = open(self.path, "ab")

    def write(self, data: bytes):
        if self._file is None:
            self._content += data
        else:
            self._file.write(data)

    def flush(self, force: bool = False):
        if self._file is not None:
            self._file.flush()
        elif force or time.monotonic() - self._written_at >= REWRITE_INTERVAL_S:
            self.path.write_bytes(bytes(self._content))
            self._written_at = time.monotonic()

    def close(self):
        self.flush(force=True)
        if self._file is not None:
            self._file.close()


def glob(pattern: epath.PathLike) -> list[str]:
    """Sorted paths matching `pattern`; remote patterns may have wildcards in their last part only."""
    if not is_remote(pattern):
        return sorted(globlib.glob(os.fspath(pattern)))
    pattern = epath.Path(pattern)
    return sorted(os.fspath(p) for p in pattern.parent.glob(pattern.name)) if pattern.parent.exists() else []


def names(directory: epath.PathLike) -> frozenset[str]:
    """Names of the entries of `directory` (empty when it does not exist): one listing, not a request per
    file, for checking which of many files are present in a bucket."""
    directory = epath.Path(directory)
    return frozenset(p.name for p in directory.iterdir()) if directory.is_dir() else frozenset()
