"""Downloads against a local HTTP server: checksum, resume with Range, fast failure offline."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from typing import ClassVar

import pytest

from metasparse.cli import main
from metasparse.data import download

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file.bin, honouring ``Range: bytes=N-``; counts bytes sent."""

    sent: ClassVar[list[int]] = []

    def do_GET(self):
        if self.path != "/file.bin":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        type(self).sent.append(len(body))  # before writing: the client may finish first
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _RangeHandler.sent = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _source(url: str, checksum: str | None = None) -> download.Source:
    return download.Source(
        f"{url}/file.bin", "file.bin", checksum or "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    )


def test_download_and_verify(server, tmp_path):
    path = download.fetch(_source(server), tmp_path, timeout=5, quiet=True)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    # already there and valid: nothing is fetched again
    download.fetch(_source(server), tmp_path, timeout=5, quiet=True)
    assert _RangeHandler.sent == [len(PAYLOAD)]


def test_resume_partial_download(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:30000])
    md5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()
    path = download.fetch(_source(server, md5), tmp_path, timeout=5, quiet=True)
    assert path.read_bytes() == PAYLOAD
    assert _RangeHandler.sent == [len(PAYLOAD) - 30000]  # only the rest was sent


def test_checksum_mismatch_removes_file(server, tmp_path):
    bad = _source(server, "sha256:" + "0" * 64)
    with pytest.raises(download.DownloadError, match="fails its checksum"):
        download.fetch(bad, tmp_path, timeout=5, quiet=True)
    assert not any(tmp_path.iterdir())


def test_http_error(server, tmp_path):
    src = download.Source(f"{server}/missing", "m.bin", "md5:" + "0" * 32)
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.fetch(src, tmp_path, timeout=5, quiet=True)


def test_unreachable_fails_fast(tmp_path):
    # a port nobody listens on: refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = download.Source(f"http://127.0.0.1:{port}/x", "x", "md5:" + "0" * 32)
    t0 = time.perf_counter()
    with pytest.raises(download.DownloadError, match="no network"):
        download.fetch(src, tmp_path, timeout=1, quiet=True)
    assert time.perf_counter() - t0 < 2


def test_silent_server_times_out(tmp_path):
    # accepts the connection but never answers: the timeout, not a hang, ends it
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        src = download.Source(
            f"http://127.0.0.1:{listener.getsockname()[1]}/x", "x", "md5:" + "0" * 32
        )
        t0 = time.perf_counter()
        with pytest.raises(download.DownloadError, match="cannot reach"):
            download.fetch(src, tmp_path, timeout=0.5, quiet=True)
        assert time.perf_counter() - t0 < 3
    finally:
        listener.close()


def test_cli_offline_exit_code(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    rc = main(["data", "download", "cifar100", "--to", str(tmp_path), "--timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 3 and "no network" in err and "cifar-100-python.tar.gz" in err


def test_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="unknown download 'mnist'"):
        download.download("mnist", tmp_path)
