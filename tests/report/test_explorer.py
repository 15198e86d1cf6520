import base64
import http.client
import io
import json
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from betavae.cli import main
from betavae.errors import ConfigError
from betavae.report import explorer as explorer_module
from betavae.report.explorer import MAX_ABS, Explorer, make_server


@pytest.fixture(scope="module")
def explorer(beta_run):
    return Explorer(beta_run)


@pytest.fixture(scope="module")
def server(explorer):
    srv = make_server(explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _request(server, path, body=None, raw=None, method=None, headers=None):
    """(status, parsed JSON or text) of a request; ``raw`` bytes are sent as the body unchanged."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(_url(server, path), data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text, kind = response.status, response.read().decode(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        status, text, kind = error.code, error.read().decode(), error.headers["Content-Type"]
    return status, (json.loads(text) if kind == "application/json" else text)


def _raw(port, data, wait=5.0):
    """All bytes the server sends back to the raw bytes ``data`` until it closes the connection, or
    None when it keeps the connection open for ``wait`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return None
        except ConnectionResetError:  # closed with unread bytes: what came before the reset still counts
            pass
        return received


def _statuses(received):
    """The status codes of the answers in ``received``, in order, each answer's body skipped by its
    Content-Length (an answer follows the previous body directly, not on a line of its own)."""
    statuses = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        status = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
        length = re.search(rb"\r\nContent-Length: (\d+)", head)
        assert status and length, f"not an answer: {received[:80]!r}"
        statuses.append(int(status[1]))
        received = rest[int(length[1]):]
    return statuses


def _reset(sock):
    """Close ``sock`` with a TCP reset, as a client that crashed or was killed does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _pixels(data_uri):
    header, payload = data_uri.split(",", 1)
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))


def test_page_and_info(server, beta_run):
    status, page = _request(server, "/")
    assert status == 200 and 'id="sliders"' in page and 'id="decoded"' in page
    status, info = _request(server, "/api/info")
    assert status == 200
    kl = json.loads((beta_run / "diagnosis.json").read_text())["kl_per_dim"]
    assert info["latents"] == 4 and info["kl_per_dim"] == pytest.approx(kl)
    assert [kl[d] for d in info["order"]] == sorted(kl, reverse=True)
    assert info["collapsed"] == [v < info["collapse_threshold"] for v in kl]
    assert info["dataset_size"] == 512 and info["image_shape"] == [1, 64, 64]


def test_decode_follows_the_code(server):
    status, zero = _request(server, "/api/decode", {"z": [0, 0, 0, 0]})
    assert status == 200
    base = _pixels(zero["image"])
    assert base.shape == (64, 64)
    _, info = _request(server, "/api/info")
    moved = [0.0] * 4
    moved[info["order"][0]] = 3.0
    _, other = _request(server, "/api/decode", {"z": moved})
    assert np.abs(_pixels(other["image"]).astype(int) - base).sum() > 0
    _, again = _request(server, "/api/decode", {"z": [0.0, 0.0, 0.0, 0.0]})
    assert np.array_equal(_pixels(again["image"]), base)  # deterministic: the decoder's mean


def test_encode_a_dataset_image(server, beta_run):
    import betavae
    import torch

    status, out = _request(server, "/api/encode", {"index": 7})
    assert status == 200 and out["index"] == 7 and len(out["z"]) == 4
    assert _pixels(out["image"]).shape == _pixels(out["reconstruction"]).shape == (64, 64)
    labelled = np.load(json.loads((beta_run / "config.json").read_text())["data"])
    assert np.array_equal(_pixels(out["image"]) > 127, labelled["images"][7] > 0)
    mu, _ = betavae.load(beta_run).encode(torch.from_numpy(labelled["images"][7:8, None].astype(np.float32)))
    assert out["z"] == pytest.approx(mu[0].tolist(), abs=1e-5)


def test_thumbnails_and_samples(server):
    status, out = _request(server, "/api/images?count=3&seed=5")
    assert status == 200 and len(out["images"]) == 3
    assert _request(server, "/api/images?count=3&seed=5")[1] == out
    assert len({i["index"] for i in out["images"]}) == 3
    first, second = _request(server, "/api/sample?seed=1")[1], _request(server, "/api/sample?seed=1")[1]
    assert first == second and len(first["z"]) == 4
    assert _request(server, "/api/sample")[1] != _request(server, "/api/sample")[1]


@pytest.mark.parametrize("raw,status,message", [
    (b'{"z": [0, 0, 0]}', 400, "has 3 values; this model has 4"),
    (b'{"z": [0, 0, 0, 0, 0]}', 400, "has 5 values"),
    (b'{"z": [0, "a", 0, 0]}', 400, '"z"[1] is "a", not a number'),
    (b'{"z": [0, true, 0, 0]}', 400, "not a number"),
    (b'{"z": [0, null, 0, 0]}', 400, "not a number"),
    (b'{"z": [0, NaN, 0, 0]}', 400, "NaN is not a number JSON allows"),
    (b'{"z": [0, 0, Infinity, 0]}', 400, "Infinity is not a number JSON allows"),
    (b'{"z": [0, 0, 0, 1e400]}', 400, "not finite"),
    (b'{"z": [0, 0, 0, 10.5]}', 422, "outside ±10"),
    (b'{"z": [-11, 0, 0, 0]}', 422, "outside"),
    (b'{"z": "0,0,0,0"}', 400, "must be a list"),
    (b'[0, 0, 0, 0]', 400, "JSON object"),
    (b'{"x": 1}', 400, "JSON object"),
    (b'{"z": [0, 0', 400, "not valid JSON"),
    (b'\xff\xfe', 400, "not valid JSON"),
    (b'[' * 100000 + b']' * 100000, 413, "at most"),
])
def test_bad_decode_requests_get_a_4xx_with_a_message(server, raw, status, message):
    got, body = _request(server, "/api/decode", raw=raw)
    assert got == status and message in body["error"]


def test_the_range_limit_is_inclusive(server):
    assert _request(server, "/api/decode", {"z": [MAX_ABS, -MAX_ABS, 0, 0]})[0] == 200


@pytest.mark.parametrize("path,body,status,message", [
    ("/api/encode", {"index": 512}, 422, "between 0 and 511"),
    ("/api/encode", {"index": -1}, 422, "between 0 and 511"),
    ("/api/encode", {"index": 1.5}, 400, "whole number"),
    ("/api/encode", {"index": "3"}, 200, None),
    ("/api/encode", {"index": "x"}, 400, "whole number"),
    ("/api/encode", {}, 400, "index"),
    ("/api/images?count=0", None, 422, "between 1 and 64"),
    ("/api/images?count=many", None, 400, "whole number"),
    ("/api/sample?seed=-2", None, 422, "between 0 and"),
    ("/api/nothing", None, 404, "no such page"),
    ("/api/decode", None, 405, "GET is not allowed"),
])
def test_other_bad_requests(server, path, body, status, message):
    got, out = _request(server, path, body)
    assert got == status
    if message:
        assert message in out["error"]


def test_missing_length_and_foreign_host_are_refused(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    connection.putrequest("POST", "/api/decode")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    connection.close()
    # a page on another site that resolves its name to 127.0.0.1 (DNS rebinding) sends its own Host
    status, out = _request(server, "/api/info", headers={"Host": "attacker.example:80"})
    assert status == 403 and "localhost" in out["error"]
    assert _request(server, "/api/info", headers={"Host": f"localhost:{server.server_address[1]}"})[0] == 200


def test_cli_explore_reports_a_busy_port(beta_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["explore", str(beta_run), "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


#: A request a page on another site might hide in a request body: the Host check is only worth
#: something if this can never be read as a request of its own.
SMUGGLED = b"GET /api/info HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _post(path, headers, body=SMUGGLED):
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


@pytest.mark.parametrize("request_bytes,status", [
    # a page on a site whose name resolves to 127.0.0.1 (DNS rebinding): refused, and so is its body
    (_post("/api/decode", {"Host": "attacker.example", "Content-Type": "application/json",
                           "Content-Length": len(SMUGGLED)}), 403),
    (_post("/api/decode", {"Host": "127.0.0.1", "Origin": "http://attacker.example", "Content-Type": "application/json",
                           "Content-Length": len(SMUGGLED)}), 403),
    (_post("/api/nothing", {"Host": "127.0.0.1", "Content-Type": "application/json",
                            "Content-Length": len(SMUGGLED)}), 404),
    (_post("/api/info", {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": len(SMUGGLED)}), 405),
    (_post("/api/decode", {"Host": "127.0.0.1", "Content-Type": "application/json"}), 411),
    (_post("/api/decode", {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": "ten"}), 400),
    (_post("/api/decode", {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": 10**9}), 413),
    (_post("/api/decode", {"Host": "127.0.0.1", "Content-Type": "text/plain", "Content-Length": len(SMUGGLED)}), 415),
])
def test_an_error_answer_ends_the_connection(server, request_bytes, status):
    received = _raw(server.server_address[1], request_bytes)
    assert received is not None, "the connection was kept open after the error answer"
    assert _statuses(received) == [status]  # the body was not answered as a second request
    head = received.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nConnection: close" in head


def test_a_successful_answer_keeps_the_connection(server):
    # the other side of the test above: two requests on one connection get two answers
    one = b"GET /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    last = b"GET /api/sample HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    assert _statuses(_raw(server.server_address[1], one + last)) == [200, 200]


@pytest.mark.parametrize("content_type,status", [
    ("application/json", 200),
    ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200),
    ("text/plain", 415),  # what a cross-site form or fetch may send without the browser asking first
    ("text/plain; charset=utf-8", 415),
    ("application/x-www-form-urlencoded", 415),
    (None, 415),
])
def test_a_post_body_must_be_declared_json(server, content_type, status):
    port = server.server_address[1]
    body = b'{"z": [0, 0, 0, 0]}'
    headers = {"Host": f"127.0.0.1:{port}", "Content-Length": len(body), "Connection": "close"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    received = _raw(port, _post("/api/decode", headers, body))
    assert _statuses(received) == [status]
    if status == 415:
        assert b"Content-Type: application/json" in received  # the message says what to send


def test_only_the_explorers_own_origin_is_answered(server):
    port = server.server_address[1]
    decode = {"z": [0, 0, 0, 0]}
    for origin in ("http://attacker.example", f"http://attacker.example:{port}", f"http://127.0.0.1:{port + 1}",
                   f"https://127.0.0.1:{port}", f"http://localhost:{port}", "null", f"http://127.0.0.1:{port}/x",
                   "http://[::1"):
        status, out = _request(server, "/api/decode", decode, headers={"Origin": origin})
        assert status == 403 and "not accepted" in out["error"], origin
    assert _request(server, "/api/info", headers={"Origin": "http://attacker.example"})[0] == 403
    assert _request(server, "/api/decode", decode, headers={"Origin": f"http://127.0.0.1:{port}"})[0] == 200
    assert _request(server, "/api/decode", decode,
                    headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})[0] == 200
    assert _request(server, "/api/decode", decode)[0] == 200  # no Origin: curl, scripts


@pytest.fixture
def quick_server(explorer, monkeypatch):
    """A server of its own whose clients time out after half a second; ``finished`` is released once
    per connection, after the server has logged whatever it logs about it and closed it."""
    monkeypatch.setattr(explorer_module, "CLIENT_TIMEOUT", 0.5)
    srv = make_server(explorer, "127.0.0.1", 0)
    srv.finished = threading.Semaphore(0)
    close = srv.shutdown_request

    def shutdown_request(request):
        close(request)
        srv.finished.release()

    srv.shutdown_request = shutdown_request
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("stalled", [
    b"GET /api/in",  # in the request line
    b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl",  # in the headers
    _post("/api/decode", {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": 100}, b'{"z": ['),
])
def test_a_stalled_client_is_dropped_quietly(quick_server, capfd, stalled):
    start = time.monotonic()
    received = _raw(quick_server.server_address[1], stalled)
    elapsed = time.monotonic() - start
    assert received == b""  # dropped without an answer: a client that stalls is not listening either
    assert 0.4 < elapsed < 4.0
    assert quick_server.finished.acquire(timeout=5)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("sent", [
    _post("/api/decode", {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": 100}, b'{"z": ['),
    b"GET /api/images?count=64 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",  # gone before its answer is written
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
])
def test_a_client_that_goes_away_leaves_no_traceback(quick_server, capfd, sent):
    for _ in range(3):  # the reset can meet the server reading, working or writing: each must stay quiet
        sock = socket.create_connection(("127.0.0.1", quick_server.server_address[1]), timeout=5)
        sock.sendall(sent)
        _reset(sock)
        assert quick_server.finished.acquire(timeout=5)
    assert capfd.readouterr().err == ""


def test_a_fault_of_the_explorer_is_still_logged(quick_server, explorer, monkeypatch, capfd):
    def broken():
        raise RuntimeError("a bug in the explorer")

    monkeypatch.setattr(explorer, "info", broken)
    received = _raw(quick_server.server_address[1], b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _statuses(received) == [500] and b"a bug in the explorer" in received
    assert quick_server.finished.acquire(timeout=5)
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug in the explorer" in err


@pytest.mark.parametrize("port_args", [["--port", "70000"], ["--port=-1"], ["--port", "-1"], ["--port", "65536"]])
def test_cli_explore_refuses_a_port_out_of_range(beta_run, capsys, port_args):
    assert main(["explore", str(beta_run), *port_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("betavae: error: --port must be between 0 and 65535") and "Traceback" not in err


def test_make_server_refuses_a_port_out_of_range(explorer):
    for port in (-1, 65536, 70000):
        with pytest.raises(ConfigError, match="between 0 and 65535"):
            make_server(explorer, "127.0.0.1", port)


def test_data_that_does_not_fit_the_model_leaves_the_explorer_on_the_prior(beta_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(beta_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": None, "dataset": "color-dsprites"}))
    explored = Explorer(run)  # 3-channel images for a 1-channel model: no dataset, and the reason kept
    assert explored.dataset is None
    assert "have 3 channels of 64x64 pixels, but its model was trained on images with 1 channel" in explored.data_problem
