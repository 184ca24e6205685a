"""PixMo image downloader: concurrent, rate-limited, resumable, hash-checked (official `olmo/data/download_urls.py`).

    report = download(pixmo.image_items(files, "pixmo-points"), image_dir)
    print(report.summary())

Each URL is fetched at most once per run into `<image_dir>/sha256(url)` (the official cache name), via a
temporary file renamed on success, so an interrupted run leaves no partial images and a rerun (resume)
skips every file already there and valid. Differences from the official downloader: failures are reported
(`Report.failed`, URL -> reason) instead of being written into the cache file, so a rerun retries them;
only http/https URLs (and redirects) are followed; the response size is capped; retries cover timeouts,
connection errors, 429 and 5xx with exponential backoff; requests to one host are rate-limited.

Validity: with expected sha256 hashes the bytes must hash to one of them (rows of one URL may carry
different hashes; which row trains with the bytes is decided when the example is read,
`pixmo_checks.matching_rows`, so neither file order nor cache state picks a hash); without, PIL must open
them as an image of non-zero size (official `check_sha=False`). `Report.outcomes` sorts every URL into
fetched / already there / 404 / hash mismatch / other.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Collection, Iterable

import tqdm
from etils import epath
from PIL import Image

from molmo_jax import paths

SCHEMES = ("http", "https")
USER_AGENT = "molmo-jax-downloader/0.1"


def image_file(image_dir: str | os.PathLike, url: str) -> str:
    """Cache path of the image at `url`: `<image_dir>/sha256(url)` (the official cache name)."""
    return os.path.join(os.fspath(image_dir), hashlib.sha256(url.encode()).hexdigest())


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    """workers: concurrent fetches; timeout: seconds per connect / read and for a whole attempt;
    retries: extra attempts after a transient failure, waiting backoff * 2**k seconds; per_host_rate:
    most requests per second to one host (None: unlimited); max_bytes: larger responses fail."""
    workers: int = 16
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 1.0
    per_host_rate: float | None = 10.0
    max_bytes: int = 64 << 20
    progress: bool = True


@dataclasses.dataclass
class Report:
    """Outcome of a run: URLs fetched now, found valid in the cache, and failed (URL -> reason)."""
    downloaded: list[str] = dataclasses.field(default_factory=list)
    cached: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    def outcomes(self) -> dict[str, int]:
        """URLs per outcome: fetched, already there, 404, hash mismatch, other (failures)."""
        kinds = collections.Counter(_outcome(r) for r in self.failed.values())
        return {"fetched": len(self.downloaded), "already there": len(self.cached), "404": kinds["404"],
                "hash mismatch": kinds["hash mismatch"], "other": kinds["other"]}

    def summary(self) -> str:
        reasons = collections.Counter(r.split(":")[0] for r in self.failed.values())
        total = len(self.downloaded) + len(self.cached) + len(self.failed)
        text = (f"{total} images: {len(self.downloaded)} downloaded ({self.bytes / 1e6:.1f} MB), "
                f"{len(self.cached)} already cached, {len(self.failed)} failed in {self.seconds:.1f} s")
        return text + "".join(f"\n  {n} x {r}" for r, n in reasons.most_common())


def _outcome(reason: str) -> str:
    return {"http 404": "404", "sha256 mismatch": "hash mismatch"}.get(reason, "other")


class DownloadError(Exception):
    """A fetch failed; `transient` failures are retried."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.transient = transient


class _HostRateLimiter:
    """Spaces the requests to each host at least 1 / rate seconds apart."""

    def __init__(self, rate: float | None):
        self._interval = 0.0 if not rate else 1.0 / rate
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self._interval
        time.sleep(max(0.0, start - now))


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http / https URLs (urllib would also follow ftp)."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        if urllib.parse.urlsplit(target).scheme not in SCHEMES:
            raise DownloadError(f"redirect to a non-http(s) URL {target!r}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_SafeRedirects)


Hashes = str | Collection[str] | None  # the expected sha256 (hex) of an image, several, or None


def check_bytes(data: bytes, sha256: Hashes) -> None:
    """Raises DownloadError unless `data` hashes to `sha256` (one of them, when several are given) or,
    without a hash, is a decodable image."""
    if sha256 is not None:
        expected = {sha256.lower()} if isinstance(sha256, str) else {h.lower() for h in sha256}
        if hashlib.sha256(data).hexdigest() not in expected:
            raise DownloadError("sha256 mismatch")
        return
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            if min(im.size) <= 0:
                raise DownloadError("empty image")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's "broken file" errors
        raise DownloadError(f"not an image: {e}") from e


def _fetch(url: str, options: DownloadOptions) -> bytes:
    """The body of one GET; DownloadError (transient for timeouts, connection errors, 429 and 5xx)."""
    deadline = time.monotonic() + options.timeout
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _OPENER.open(request, timeout=options.timeout) as response:
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > options.max_bytes:
                    raise DownloadError(f"too large: over {options.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise DownloadError("timeout: body too slow", transient=True)
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"http {e.code}", transient=e.code == 429 or e.code >= 500) from e
    except (socket.timeout, TimeoutError) as e:
        raise DownloadError("timeout", transient=True) from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise DownloadError("timeout", transient=True) from e
        raise DownloadError(f"connection: {e.reason}", transient=True) from e
    except (ConnectionError, OSError) as e:
        raise DownloadError(f"connection: {e}", transient=True) from e


def _write_atomic(path: str, data: bytes) -> None:
    if paths.is_remote(path):  # an object appears whole or not at all
        epath.Path(path).write_bytes(data)
        return
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_cached(path: str, sha256: Hashes) -> bool:
    path = epath.Path(path)
    if not path.is_file():
        return False
    data = path.read_bytes()
    try:
        check_bytes(data, sha256)
    except DownloadError:
        return False
    return True


def download_one(url: str, sha256: Hashes, image_dir: str, options: DownloadOptions,
                 limiter: _HostRateLimiter) -> tuple[str, int]:
    """("cached" | "downloaded", bytes written) for one URL; raises DownloadError on failure."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise DownloadError(f"unsupported URL {url!r} (only http / https)")
    path = image_file(image_dir, url)
    if _is_cached(path, sha256):
        return "cached", 0
    for attempt in range(options.retries + 1):
        limiter.wait(parts.hostname)
        try:
            data = _fetch(url, options)
            break
        except DownloadError as e:
            if not e.transient or attempt == options.retries:
                raise
            time.sleep(options.backoff * 2 ** attempt)
    check_bytes(data, sha256)
    _write_atomic(path, data)
    return "downloaded", len(data)


def download(items: Iterable[tuple[str, Hashes]], image_dir: str | os.PathLike,
             options: DownloadOptions = DownloadOptions(), desc: str | None = None) -> Report:
    """Fetches every (url, sha256 hash(es) or None) into `image_dir`; returns the `Report` (never raises
    per URL); `desc` labels the progress bar."""
    image_dir = os.fspath(image_dir)
    epath.Path(image_dir).mkdir(parents=True, exist_ok=True)
    unique = dict(items)  # one fetch per URL
    report, start = Report(), time.monotonic()
    limiter = _HostRateLimiter(options.per_host_rate)
    with concurrent.futures.ThreadPoolExecutor(max(1, options.workers)) as pool, \
            tqdm.tqdm(total=len(unique), disable=not options.progress, unit="img", desc=desc) as bar:
        futures = {pool.submit(download_one, url, sha, image_dir, options, limiter): url
                   for url, sha in unique.items()}
        try:
            for future in concurrent.futures.as_completed(futures):
                url = futures[future]
                try:
                    status, size = future.result()
                except DownloadError as e:
                    report.failed[url] = str(e)
                else:
                    (report.downloaded if status == "downloaded" else report.cached).append(url)
                    report.bytes += size
                bar.update()
        except KeyboardInterrupt:  # stop now: only the fetches under way finish (each file is whole or absent)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    report.seconds = time.monotonic() - start
    return report
