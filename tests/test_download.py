"""Shard download against a real HTTP server on 127.0.0.1.

Every test starts a scriptable `ThreadingHTTPServer` serving real parquet shards written with
pyarrow. Each path has a queue of behaviours (500, 429, a truncated body, a slow answer, a body
that is not parquet, 404, ...) consumed one per request; once the queue is empty the path is
served normally, honouring `Range: bytes=N-` with a 206. The server records every request, so
tests can say exactly what the client asked for. Nothing here mocks urllib or prepare.py.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prepare import HarnessError, download_shard, download_shards, shard_is_valid, shard_name

FAST = {"backoff": 0.01, "timeout": 5.0}  # a generous timeout where slowness is not the point


# ---------------------------------------------------------------------------------------
# Shards and the scriptable server
# ---------------------------------------------------------------------------------------


def make_shard(index: int, rows: int = 300) -> bytes:
    """A real parquet shard with a `text` column, different for every index."""
    texts = [f"shard {index} document {i}: the quick brown fox jumps over the lazy dog {i * 7919}"
             for i in range(rows)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


# Behaviours a path can be scripted with, consumed one per request.
OK = ("ok",)
E500 = ("status", 500)
E503 = ("status", 503)
E429 = ("status", 429)
E404 = ("status", 404)
GARBAGE = ("garbage",)


def truncated(nbytes: int) -> tuple:
    """Announce the whole body's Content-Length, send only `nbytes`, close the connection."""
    return ("truncate", nbytes)


def chunked_cut(nbytes: int) -> tuple:
    """Answer with chunked transfer encoding and hang up in the middle of a chunk."""
    return ("chunked_cut", nbytes)


def slow(seconds: float) -> tuple:
    """Wait `seconds` before answering at all (then answer normally if the client is still there)."""
    return ("slow", seconds)


@dataclass
class Request:
    path: str
    range: str | None
    behaviour: tuple
    status: int | None = None  # what the server answered with, once it answered


class ShardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address):
        super().__init__(address, _Handler)
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, deque] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.on_request = None  # optional callback, run as each request arrives

    # -- the API tests use -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/data"

    def add_shard(self, index: int, behaviours=(), data: bytes | None = None) -> bytes:
        """Serve shard `index` at /data/shard_NNNNN.parquet after the scripted behaviours."""
        data = make_shard(index) if data is None else data
        path = f"/data/{shard_name(index)}"
        self.files[path] = data
        self.scripts[path] = deque(behaviours)
        return data

    def requests_for(self, index: int) -> list[Request]:
        path = f"/data/{shard_name(index)}"
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def handle_error(self, request, client_address):
        pass  # clients hanging up on slow or truncated answers are part of the script


class _Handler(BaseHTTPRequestHandler):
    server: ShardHTTPServer

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        srv = self.server
        if srv.on_request is not None:
            srv.on_request(self.path)
        with srv.lock:
            script = srv.scripts.get(self.path)
            behaviour = script.popleft() if script else (OK if self.path in srv.files else E404)
            record = Request(self.path, self.headers.get("Range"), behaviour)
            srv.requests.append(record)
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            self._answer(record, behaviour)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (it timed out); that is what the script wanted
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _send(self, record: Request, status: int, body: bytes, headers: dict | None = None,
              content_length: int | None = None):
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _answer(self, record: Request, behaviour: tuple):
        kind = behaviour[0]
        if kind == "status":
            self._send(record, behaviour[1], f"HTTP {behaviour[1]}\n".encode())
            return
        if kind == "garbage":
            self._send(record, 200, b"<html><body>this is not a parquet file</body></html>\n" * 20)
            return
        if kind == "slow":
            if self.server.stopping.wait(behaviour[1]):
                return
        if kind == "chunked_cut":
            record.status = 200
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            body = self.server.files[self.path][: behaviour[1]]
            self.wfile.write(f"{len(body) * 2:x}\r\n".encode() + body)  # promises twice what it sends
            self.wfile.flush()
            self.close_connection = True
            return
        status, body, headers = self._full_or_range(self.server.files[self.path])
        if kind == "truncate":
            self._send(record, status, body[: behaviour[1]], headers, content_length=len(body))
            self.close_connection = True
            return
        self._send(record, status, body, headers)

    def _full_or_range(self, data: bytes):
        """200 with the whole file, or 206 for `Range: bytes=N-` (416 past the end)."""
        spec = self.headers.get("Range")
        if not spec:
            return 200, data, {"Accept-Ranges": "bytes"}
        assert spec.startswith("bytes=") and spec.endswith("-"), f"unexpected Range {spec!r}"
        start = int(spec[len("bytes="):-1])
        if start >= len(data):
            return 416, b"", {"Content-Range": f"bytes */{len(data)}"}
        return 206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                                   "Accept-Ranges": "bytes"}


@pytest.fixture
def server(monkeypatch):
    """A real HTTP server on 127.0.0.1 (port 0), shut down after the test."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")  # never route 127.0.0.1 through a proxy
    srv = ShardHTTPServer(("127.0.0.1", 0))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def leftovers(dest_dir: Path, keep: set[str]) -> list[str]:
    """Files in dest_dir other than `keep` (a `.part` or any temp file would show up here)."""
    return sorted(p.name for p in dest_dir.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------------
# download_shard
# ---------------------------------------------------------------------------------------


def test_transient_500_and_429_answers_are_retried_until_the_shard_lands(server, tmp_path):
    data = server.add_shard(7, [E500, E429, E503])

    path = download_shard(7, tmp_path, server.base_url, attempts=6, **FAST)

    assert path == tmp_path / shard_name(7)
    assert shard_is_valid(path)
    assert path.read_bytes() == data
    assert [r.status for r in server.requests_for(7)] == [500, 429, 503, 200]
    assert leftovers(tmp_path, {shard_name(7)}) == []


def test_a_truncated_body_is_resumed_with_a_range_request_and_the_file_is_byte_identical(server, tmp_path):
    data = make_shard(3)
    sent = len(data) // 3
    server.add_shard(3, [truncated(sent)], data=data)

    path = download_shard(3, tmp_path, server.base_url, attempts=3, **FAST)

    first, second = server.requests_for(3)
    assert (first.range, first.status) == (None, 200)
    assert second.range == f"bytes={sent}-"
    assert second.status == 206
    assert path.read_bytes() == data
    assert leftovers(tmp_path, {shard_name(3)}) == []


def test_a_response_slower_than_the_timeout_is_retried_and_then_succeeds(server, tmp_path):
    data = server.add_shard(1, [slow(2.0)])

    path = download_shard(1, tmp_path, server.base_url, attempts=3, backoff=0.01, timeout=0.3)

    assert path.read_bytes() == data
    requests = server.requests_for(1)
    assert len(requests) == 2
    assert requests[0].status is None  # the client hung up before the slow answer came
    assert requests[1].status == 200


def test_a_body_that_is_not_parquet_is_rejected_and_downloaded_again_never_landing_at_dest(server, tmp_path):
    data = server.add_shard(2, [GARBAGE, GARBAGE])
    dest = tmp_path / shard_name(2)
    # As each request arrives (so after the previous body was judged): what is at dest?
    at_dest: list[str] = []
    server.on_request = lambda path: at_dest.append(
        "nothing" if not dest.exists() else "valid" if shard_is_valid(dest) else "INVALID")

    path = download_shard(2, tmp_path, server.base_url, attempts=4, **FAST)

    assert path == dest and shard_is_valid(dest) and dest.read_bytes() == data
    requests = server.requests_for(2)
    assert [r.behaviour for r in requests] == [GARBAGE, GARBAGE, OK]
    # A bad whole file is discarded, not resumed: every retry starts from byte 0.
    assert [r.range for r in requests] == [None, None, None]
    assert at_dest == ["nothing", "nothing", "nothing"]
    assert leftovers(tmp_path, {shard_name(2)}) == []


def test_when_every_attempt_fails_it_raises_runtime_error_naming_the_shard_and_leaves_no_dest(server, tmp_path):
    server.add_shard(4, [E500] * 10)

    with pytest.raises(RuntimeError) as excinfo:
        download_shard(4, tmp_path, server.base_url, attempts=3, **FAST)

    assert not isinstance(excinfo.value, HarnessError)
    assert shard_name(4) in str(excinfo.value)
    assert "3 attempts" in str(excinfo.value)
    assert "500" in str(excinfo.value)
    assert len(server.requests_for(4)) == 3
    assert not (tmp_path / shard_name(4)).exists()


def test_a_404_raises_harness_error_with_exit_code_2_naming_the_url(server, tmp_path):
    server.add_shard(5, [E404, E404])

    with pytest.raises(HarnessError) as excinfo:
        download_shard(5, tmp_path, server.base_url, attempts=6, **FAST)

    assert isinstance(excinfo.value, SystemExit)
    assert excinfo.value.code == 2
    assert f"{server.base_url}/{shard_name(5)}" in str(excinfo.value)
    assert "404" in str(excinfo.value)
    assert len(server.requests_for(5)) == 1  # a missing shard is not retried
    assert leftovers(tmp_path, set()) == []


def test_a_valid_shard_already_present_is_not_requested_again(server, tmp_path):
    data = server.add_shard(6)
    dest = tmp_path / shard_name(6)
    dest.write_bytes(data)
    mtime = dest.stat().st_mtime_ns

    assert download_shard(6, tmp_path, server.base_url, **FAST) == dest
    assert download_shards([6], tmp_path, server.base_url, workers=4, **FAST) == [dest]

    assert server.requests == []
    assert dest.stat().st_mtime_ns == mtime


def test_a_corrupt_shard_at_the_destination_is_replaced_by_a_good_download(server, tmp_path):
    data = server.add_shard(8)
    dest = tmp_path / shard_name(8)
    dest.write_bytes(data[: len(data) // 2])  # a truncated copy from an interrupted run
    assert not shard_is_valid(dest)

    path = download_shard(8, tmp_path, server.base_url, attempts=3, **FAST)

    assert path == dest
    assert dest.read_bytes() == data
    (request,) = server.requests_for(8)
    assert request.range is None  # the corrupt file is not mistaken for a partial download
    assert leftovers(tmp_path, {shard_name(8)}) == []


# ---------------------------------------------------------------------------------------
# download_shards
# ---------------------------------------------------------------------------------------


def test_download_shards_fetches_every_index_in_parallel(server, tmp_path):
    indices = [0, 1, 2, 3, 4, 5, 6542]
    expected = {}
    for i in indices:
        # Every shard waits a little before answering so overlapping requests are visible;
        # two of them fail once first so retries run alongside other downloads.
        script = [E500, slow(0.15)] if i in (1, 4) else [slow(0.15)]
        expected[i] = server.add_shard(i, script)
    dest_dir = tmp_path / "data"  # download_shards creates it

    paths = download_shards(indices, dest_dir, server.base_url, workers=4, attempts=3, **FAST)

    assert paths == [dest_dir / shard_name(i) for i in indices]
    for i, path in zip(indices, paths):
        assert path.read_bytes() == expected[i]
    assert server.max_in_flight >= 2
    for i in indices:
        assert len(server.requests_for(i)) == (2 if i in (1, 4) else 1)
    assert leftovers(dest_dir, {shard_name(i) for i in indices}) == []


def test_download_shards_turns_a_shard_that_always_fails_into_harness_error_exit_2(server, tmp_path, capsys):
    good = {i: server.add_shard(i) for i in (0, 1, 3)}
    server.add_shard(2, [E500] * 10)

    with pytest.raises(HarnessError) as excinfo:
        download_shards([0, 1, 2, 3], tmp_path, server.base_url, workers=4, attempts=2, **FAST)

    assert excinfo.value.code == 2
    message = str(excinfo.value)
    assert "1 shard(s) could not be downloaded" in message
    assert shard_name(2) in message
    assert "run prepare.py again" in message
    assert f"error: {message}" in capsys.readouterr().err
    # The shards that could be fetched stay, so running again only fetches the missing one.
    for i, data in good.items():
        assert (tmp_path / shard_name(i)).read_bytes() == data
    assert not (tmp_path / shard_name(2)).exists()
    assert len(server.requests_for(2)) == 2


def test_a_chunked_body_cut_mid_chunk_is_retried_not_raised(server, tmp_path):
    data = server.add_shard(4, [chunked_cut(1000), chunked_cut(500)])

    path = download_shard(4, tmp_path, server.base_url, attempts=4, **FAST)

    assert path.read_bytes() == data
    assert [r.status for r in server.requests_for(4)] == [200, 200, 200]
    assert leftovers(tmp_path, {shard_name(4)}) == []


def test_retry_after_is_read_in_seconds_and_capped():
    from prepare import _retry_after

    assert _retry_after({"Retry-After": "7"}) == 7.0
    assert _retry_after({"Retry-After": "86400"}) == 300.0
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert _retry_after({}) is None
