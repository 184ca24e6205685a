"""The image downloader against a real HTTP server on 127.0.0.1 (loopback only)."""
import collections
import hashlib
import http.server
import io
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines import download, pixmo
from molmo_jax import cli


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buf, format="PNG")
    return buf.getvalue()


GOOD, OTHER = _png((255, 0, 0)), _png((0, 0, 255))


@pytest.fixture(scope="module")
def server():
    hits = collections.Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            path = self.path.split("?")[0]
            hits[path] += 1
            if path in ("/good.png", "/wrong-hash.png", "/target.png"):
                self._send(200, GOOD)
            elif path == "/other.png":
                self._send(200, OTHER)
            elif path == "/corrupt.png":
                self._send(200, GOOD[:30] + b"garbage")
            elif path == "/slow.png":
                time.sleep(1.0)
                self._send(200, GOOD)
            elif path == "/redirect":
                self._send(302, headers=[("Location", "/target.png")])
            elif path == "/redirect-file":
                self._send(302, headers=[("Location", "file:///etc/passwd")])
            elif path == "/flaky.png":
                self._send(503) if hits[path] == 1 else self._send(200, OTHER)
            else:
                self._send(404)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


OPTIONS = download.DownloadOptions(workers=4, timeout=0.3, retries=1, backoff=0.01, per_host_rate=None,
                                   progress=False)


def test_download_outcomes_resume_and_cache_dir(server, tmp_path):
    base, hits = server
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    items = [
        (f"{base}/good.png", sha(GOOD)),
        (f"{base}/other.png", None),
        (f"{base}/redirect", None),
        (f"{base}/flaky.png", sha(OTHER)),
        (f"{base}/corrupt.png", None),
        (f"{base}/wrong-hash.png", sha(OTHER)),
        (f"{base}/missing.png", None),
        (f"{base}/slow.png", None),
        (f"{base}/redirect-file", None),
        ("ftp://127.0.0.1/x.png", None),
        ("file:///etc/passwd", None),
    ]
    image_dir = tmp_path / "images"
    report = download.download(items, image_dir, OPTIONS)
    ok = [f"{base}/good.png", f"{base}/other.png", f"{base}/redirect", f"{base}/flaky.png"]
    assert sorted(report.downloaded) == sorted(ok) and not report.cached
    reasons = {url.rsplit("/", 1)[-1]: r for url, r in report.failed.items()}
    assert reasons["corrupt.png"].startswith("not an image")
    assert reasons["wrong-hash.png"] == "sha256 mismatch"
    assert reasons["missing.png"] == "http 404"
    assert reasons["slow.png"].startswith("timeout")
    assert "non-http(s)" in reasons["redirect-file"]
    assert reasons["x.png"].startswith("unsupported URL") and reasons["passwd"].startswith("unsupported URL")
    assert hits["/flaky.png"] == 2 and hits["/slow.png"] == 2 and hits["/missing.png"] == 1  # retries
    with open(download.image_file(image_dir, f"{base}/redirect"), "rb") as f:
        assert f.read() == GOOD
    # only the finished images, named by the URL hash, inside the cache dir; nothing else anywhere
    assert sorted(os.listdir(tmp_path)) == ["images"]
    assert sorted(os.listdir(image_dir)) == sorted(os.path.basename(download.image_file(image_dir, u)) for u in ok)
    assert "4 downloaded" in report.summary() and "7 failed" in report.summary()

    before = sum(hits.values())
    again = download.download(items[:4], image_dir, OPTIONS)  # resume: nothing is fetched again
    assert sorted(again.cached) == sorted(ok) and sum(hits.values()) == before
    with open(download.image_file(image_dir, f"{base}/other.png"), "wb") as f:
        f.write(b"truncated")
    assert download.download(items[1:2], image_dir, OPTIONS).downloaded == [f"{base}/other.png"]


def test_per_host_rate_limit(server, tmp_path):
    base, _ = server
    items = [(f"{base}/good.png?{i}", None) for i in range(5)]
    start = time.monotonic()
    report = download.download(items, tmp_path, download.DownloadOptions(
        workers=5, timeout=2, per_host_rate=20, progress=False))
    assert len(report.downloaded) == 5 and time.monotonic() - start >= 4 / 20


def test_image_items_from_parquet(tmp_path):
    """Every hash of a URL is kept whatever the row order; null and non-http URLs are left out."""
    u1, u2 = "http://h.test/1.png", "http://h.test/2.png"
    rows = dict(image_url=[u1, u2, u1, None, "ftp://h.test/3.png"], image_sha256=["B" * 64, "c" * 64, "a" * 64,
                                                                                "d" * 64, "e" * 64],
                question=["q"] * 5, answer=["a"] * 5)
    path = tmp_path / "ama.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=pixmo.SCHEMAS["pixmo-ask-model-anything"]), path)
    items = [(u1, ("a" * 64, "b" * 64)), (u2, ("c" * 64,))]
    assert pixmo.image_items(str(path), "pixmo-ask-model-anything") == items
    reversed_path = tmp_path / "reversed.parquet"
    pq.write_table(pq.read_table(path).take(list(range(4, -1, -1))), reversed_path)
    assert sorted(pixmo.image_items(str(reversed_path), "pixmo-ask-model-anything")) == items
    assert pixmo.image_items(str(path), "pixmo-ask-model-anything", check_sha=False) == [(u1, None), (u2, None)]


def test_download_command_reports_per_repo_and_usable_share(server, tmp_path, capsys):
    base, _ = server
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    data = tmp_path / "hub"
    rows = dict(image_url=[f"{base}/good.png", f"{base}/good.png", f"{base}/missing.png", f"{base}/wrong-hash.png"],
                image_sha256=[sha(OTHER), sha(GOOD), sha(GOOD), sha(OTHER)],  # good.png: one row's hash matches
                points=[[{"x": 1.0, "y": 2.0}]] * 4, count=[1] * 4, label=["a", "b", "c", "d"],
                collection_method=["pointing"] * 4)
    (data / "pixmo-points" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=pixmo.SCHEMAS["pixmo-points"]),
                   data / "pixmo-points" / "data" / "train-00000-of-00001.parquet")
    (data / "pixmo-cap" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(dict(image_url=[f"{base}/corrupt.png", f"{base}/other.png"],
                                             caption=["c", "c"], transcripts=[["t"], ["t"]]),
                                        schema=pixmo.SCHEMAS["pixmo-cap"]),
                   data / "pixmo-cap" / "data" / "train-00000-of-00001.parquet")
    argv = ["download", "pixmo", "--data-dir", str(data), "--rate", "100"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["pixmo-cap: 2 images: 1 fetched, 0 already there, 0 404, 0 hash mismatch, 1 other",
                       "pixmo-points: 3 images: 1 fetched, 0 already there, 1 404, 1 hash mismatch, 0 other"]
    assert "pixmo_points: 25.0% of 4 rows usable" in out and "pixmo_cap: 50.0% of 2 rows usable" in out
    assert cli.main(argv + ["--datasets", "pixmo-points"]) == 0  # resume: the good image is already there
    assert capsys.readouterr().out.splitlines()[0] == \
        "pixmo-points: 3 images: 0 fetched, 1 already there, 1 404, 1 hash mismatch, 0 other"


def test_interrupted_download_stops_soon_and_says_how_to_resume(server, tmp_path, monkeypatch, capsys):
    base, _ = server
    (tmp_path / "pixmo-cap" / "data").mkdir(parents=True)
    urls = [f"{base}/slow.png?{i}" for i in range(12)]  # 1 s each: 6 s on 2 workers if not interrupted
    pq.write_table(pa.Table.from_pydict(dict(image_url=urls, caption=["c"] * 12, transcripts=[["t"]] * 12),
                                        schema=pixmo.SCHEMAS["pixmo-cap"]),
                   tmp_path / "pixmo-cap" / "data" / "train-00000-of-00001.parquet")

    def interrupt(self, n=1):
        raise KeyboardInterrupt

    monkeypatch.setattr(download.tqdm.tqdm, "update", interrupt)  # Ctrl-C after the first image
    cli.build_parser()  # the subcommands' imports, outside the clock
    start = time.monotonic()
    argv = ["download", "pixmo", "--data-dir", str(tmp_path), "--workers", "2", "--rate", "100"]
    assert cli.main(argv) == 130
    assert time.monotonic() - start < 4
    assert "rerun the same command to resume" in capsys.readouterr().err
    images = os.listdir(tmp_path / "images")
    assert 1 <= len(images) <= 4 and not [f for f in images if ".tmp" in f]  # whole files only
