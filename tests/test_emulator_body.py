"""How the emulator reads request bodies: sized, chunked, compressed, too large."""
from __future__ import annotations

import gzip
import http.client
import json
import urllib.parse

import pytest

import emulator
from emulator.server import CLIENT_MAX_SIZE

MODEL = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def srv():
    with emulator.running(seed=3) as e:
        yield e


def _batch_body(n: int = 3) -> bytes:
    requests = [{"custom_id": f"c{i}", "params": {
        "model": MODEL, "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": f'<item id="r{i}">text {i}</item>'}]}} for i in range(n)]
    return json.dumps({"requests": requests}).encode()


def _post(srv, body, headers, chunked=False):
    """POST /v1/messages/batches: (status, parsed JSON)."""
    url = urllib.parse.urlsplit(srv.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", "content-type": "application/json",
               **headers}
    if chunked:
        conn.request("POST", "/v1/messages/batches", body=iter([body[:7], body[7:]]), headers=headers,
                     encode_chunked=True)
    else:
        conn.request("POST", "/v1/messages/batches", body=body, headers=headers)
    resp = conn.getresponse()
    status, payload = resp.status, json.loads(resp.read())
    conn.close()
    return status, payload


def test_chunked_body_without_length_is_read_whole(srv):
    status, payload = _post(srv, _batch_body(), {}, chunked=True)
    assert status == 200 and payload["request_counts"]["processing"] == 3


def test_chunked_body_over_the_batch_limit_is_refused(srv):
    body = _batch_body()
    srv.configure(max_batch_bytes=len(body) - 1)
    try:
        status, payload = _post(srv, body, {}, chunked=True)
    finally:
        srv.configure(max_batch_bytes=emulator.EmulatorConfig().max_batch_bytes)
    assert status == 400
    assert payload["error"]["message"].startswith(f"Request body of {len(body)} bytes exceeds the maximum")


def test_compressed_body_inflating_past_its_length_is_read_whole(srv):
    body = _batch_body(40)
    packed = gzip.compress(body)
    assert len(packed) < len(body) // 2  # the buffer sized by Content-Length must grow
    status, payload = _post(srv, packed, {"Content-Encoding": "gzip"})
    assert status == 200 and payload["request_counts"]["processing"] == 40


def test_announced_length_over_the_server_limit_is_413_before_reading(srv):
    url = urllib.parse.urlsplit(srv.base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/v1/messages/batches")
    for name, value in (("x-api-key", "k"), ("anthropic-version", "2023-06-01"),
                        ("content-type", "application/json"), ("Content-Length", str(CLIENT_MAX_SIZE + 1))):
        conn.putheader(name, value)
    conn.endheaders(b'{"requests":[')  # the rest never comes: the answer must not wait for it
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    assert resp.status == 413
    assert payload["error"] == {"type": "request_too_large",
                                "message": "Request exceeds the maximum allowed number of bytes."}
