"""``betavae explore RUN``: a local web page to move through a trained model's latent space.

The standard library's :class:`http.server.ThreadingHTTPServer` serves one page and a small JSON
API (docs/report.md lists the endpoints). Every request is checked before it reaches the model: a
bad one gets a 4xx answer with a message, never a 500, and ends the connection (a body left unread
is never taken for a next request). The server binds to 127.0.0.1 by default and, while bound to a
loopback address, answers only requests addressed to a loopback host name (a web page elsewhere
cannot reach it through DNS rebinding); it takes POST bodies only as JSON and refuses requests sent
by pages of another origin. A client that stalls is dropped after ``CLIENT_TIMEOUT`` seconds, and a
client that goes away leaves nothing in the log.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image

from betavae.checks import check_data_fits_model
from betavae.data import dataset_from_config
from betavae.data.base import ImageDataset
from betavae.errors import BetaVAEError, ConfigError
from betavae.models.vae import VAE
from betavae.objectives.gaussian import kl_to_standard_normal
from betavae.objectives.likelihoods import decoded_mean
from betavae.report.explorer_page import PAGE
from betavae.report.html import data_uri
from betavae.training import load
from betavae.training.config import TrainConfig
from betavae.training.rundir import DIAGNOSIS_FILE

#: Largest |z| a decode request may ask for: the prior puts ~1e-23 of its mass beyond 10.
MAX_ABS = 10.0
#: Initial slider range (as the traversal figures); an encoded image may widen a slider up to MAX_ABS.
SLIDER_RANGE = 3.0
#: Largest request body accepted, in bytes.
MAX_BODY = 64 * 1024
#: Most dataset thumbnails one request may ask for.
MAX_THUMBNAILS = 64
#: Seconds a client may stay silent while sending a request or taking its answer before the server
#: drops the connection: a half-sent request must not hold a thread forever. Read when a server is made.
CLIENT_TIMEOUT = 20.0
#: What a socket raises when the client went away (reset, closed) or stalled past CLIENT_TIMEOUT: not
#: a fault of the explorer, so the connection is dropped without an answer and nothing is logged.
CLIENT_GONE = (ConnectionError, TimeoutError)


class RequestError(Exception):
    """A request the client must fix: answered with ``status`` and ``message``."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _png(image: np.ndarray) -> str:
    """A ``(C, H, W)`` float image in [0, 1] as a PNG data URI."""
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
    return data_uri(buffer.getvalue(), "image/png")


def parse_code(payload: Any, latents: int, max_abs: float = MAX_ABS) -> list[float]:
    """The ``z`` list of a decode request, checked: ``latents`` finite numbers within ±``max_abs``."""
    if not isinstance(payload, dict) or "z" not in payload:
        raise RequestError(HTTPStatus.BAD_REQUEST, 'the body must be a JSON object {"z": [numbers]}.')
    z = payload["z"]
    if not isinstance(z, list):
        raise RequestError(HTTPStatus.BAD_REQUEST, f'"z" must be a list of {latents} numbers.')
    if len(z) != latents:
        raise RequestError(HTTPStatus.BAD_REQUEST, f'"z" has {len(z)} values; this model has {latents} latent dims.')
    for i, value in enumerate(z):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(HTTPStatus.BAD_REQUEST, f'"z"[{i}] is {json.dumps(value)[:40]}, not a number.')
        if not math.isfinite(value):
            raise RequestError(HTTPStatus.BAD_REQUEST, f'"z"[{i}] is not finite.')
        if abs(value) > max_abs:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY,
                               f'"z"[{i}] = {value:g} is outside ±{max_abs:g}, where the prior has no mass.')
    return [float(v) for v in z]


def _int_field(value: Any, name: str, low: int, high: int) -> int:
    """``value`` as an integer in [low, high], from JSON or a query string."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number, got {value[:40]!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a whole number, got {json.dumps(value)[:40]}.")
    if not low <= value <= high:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{name} must be between {low} and {high}, got {value}.")
    return value


class Explorer:
    """A run's model and data behind the explorer's endpoints (one lock: one forward pass at a time)."""

    def __init__(self, run_dir: str | Path, model: VAE | None = None, dataset: ImageDataset | None = None,
                 max_abs: float = MAX_ABS):
        self.run_dir = Path(run_dir)
        self.config = TrainConfig.load(self.run_dir)
        self.model = (model if model is not None else load(self.run_dir)).eval()
        self.device = next(self.model.parameters()).device
        self.data_problem = None
        if dataset is None:
            try:
                dataset = dataset_from_config(self.config)
                check_data_fits_model(dataset, self.model, self.run_dir)
            except BetaVAEError as exc:  # the page still works from the prior
                dataset, self.data_problem = None, str(exc)
        self.dataset = dataset
        self.max_abs = max_abs
        self.kl_per_dim = self._kl_per_dim()
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()

    def _kl_per_dim(self) -> list[float]:
        """From ``diagnosis.json``; otherwise estimated on up to 1024 images (or zeros without data)."""
        try:
            kl = json.loads((self.run_dir / DIAGNOSIS_FILE).read_text())["kl_per_dim"]
            if len(kl) == self.model.latents:
                return [float(v) for v in kl]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if self.dataset is None:
            return [0.0] * self.model.latents
        indices = np.random.default_rng(0).choice(len(self.dataset), size=min(1024, len(self.dataset)), replace=False)
        with torch.no_grad():
            mu, logvar = self.model.encode(torch.from_numpy(self.dataset.images(np.sort(indices))).to(self.device))
            return kl_to_standard_normal(mu, logvar).mean(0).cpu().tolist()

    def info(self) -> dict[str, Any]:
        """What the page needs to build itself."""
        threshold = self.config.collapse_threshold
        return {
            "run": self.run_dir.name,
            "objective": self.config.objective,
            "latents": self.model.latents,
            "image_shape": list(self.dataset.image_shape) if self.dataset is not None else None,
            "kl_per_dim": self.kl_per_dim,
            "order": [int(d) for d in np.argsort(self.kl_per_dim)[::-1]],
            "collapsed": [kl < threshold for kl in self.kl_per_dim],
            "collapse_threshold": threshold,
            "slider_range": SLIDER_RANGE,
            "max_abs": self.max_abs,
            "dataset": getattr(self.dataset, "name", None),
            "dataset_size": len(self.dataset) if self.dataset is not None else 0,
            "data_problem": self.data_problem,
        }

    def decode(self, z: list[float]) -> str:
        """The decoded image of the code ``z`` as a PNG data URI."""
        with self._lock, torch.no_grad():
            out = decoded_mean(self.model.decode(torch.tensor([z], dtype=torch.float32, device=self.device)))
            return _png(out[0].float().cpu().numpy())

    def require_data(self) -> ImageDataset:
        if self.dataset is None:
            raise RequestError(HTTPStatus.CONFLICT, f"the run's images are not available: {self.data_problem}")
        return self.dataset

    def encode(self, index: int) -> dict[str, Any]:
        """Dataset image ``index``: its posterior mean, the image and its reconstruction."""
        image = self.require_data().images(np.array([index]))  # (1, C, H, W)
        with self._lock, torch.no_grad():
            mu, _ = self.model.encode(torch.from_numpy(image).to(self.device))
            recon = decoded_mean(self.model.decode(mu))
        return {"index": index, "z": mu[0].cpu().tolist(), "image": _png(image[0]),
                "reconstruction": _png(recon[0].float().cpu().numpy())}

    def thumbnails(self, count: int, seed: int) -> dict[str, Any]:
        """``count`` dataset images drawn with ``seed``, each with its index."""
        dataset = self.require_data()
        indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=min(count, len(dataset)), replace=False))
        images = dataset.images(indices)
        return {"images": [{"index": int(i), "image": _png(x)} for i, x in zip(indices, images)]}

    def sample(self, seed: int | None) -> dict[str, Any]:
        """A draw of the prior N(0, I), clipped to the API's range."""
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        z = np.clip(rng.standard_normal(self.model.latents), -self.max_abs, self.max_abs)
        return {"z": z.tolist()}


def check_port(port: int) -> int:
    """``port`` if it is a TCP port number (0 picks a free one), else a ConfigError."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (0 picks a free port), got {port}.")
    return port


def _read_json(handler: BaseHTTPRequestHandler) -> Any:
    # a form or a text/plain body can be sent by any web page without the browser asking first;
    # only a page allowed to set Content-Type: application/json (this one) gets its body read
    if handler.headers.get_content_type() != "application/json":
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as JSON with Content-Type: application/json.")
    length = handler.headers.get("Content-Length")
    if length is None:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the JSON body with a Content-Length header.")
    try:
        size = int(length)
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number.") from None
    if size < 0 or size > MAX_BODY:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body may hold at most {MAX_BODY} bytes.")
    body = handler.rfile.read(size)

    def reject_constant(name: str) -> None:  # json.loads accepts NaN and Infinity unless told not to
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} is not a number JSON allows.")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON ({exc}).") from None
    except RecursionError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the body nests too deeply.") from None


def _query_int(query: dict[str, list[str]], name: str, default: int | None, low: int, high: int) -> int | None:
    if name not in query:
        return default
    return _int_field(query[name][-1], name, low, high)


def _host_name(header: str) -> str:
    """The host of a Host header without its port: ``localhost:8000`` -> ``localhost``, ``[::1]:80`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server as reached through the ``Host`` header ``host``."""
    try:
        theirs, ours = urlsplit(origin), urlsplit("//" + host)
        return (theirs.scheme == "http" and theirs.path == "" and theirs.hostname is not None
                and theirs.hostname == ours.hostname and (theirs.port or 80) == (ours.port or 80))
    except ValueError:  # a port that is not a number, a malformed IPv6 address
        return False


def make_handler(explorer: Explorer, check_host: bool) -> type[BaseHTTPRequestHandler]:
    """The request handler class for ``explorer``; ``check_host`` limits it to loopback Host headers."""
    class Handler(BaseHTTPRequestHandler):
        server_version = "betavae-explore"
        protocol_version = "HTTP/1.1"
        timeout = CLIENT_TIMEOUT  # set on each connection's socket: every read and write waits at most this long

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per slider move is noise
            pass

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if status >= 400:  # the request may have a body left unread: it must never be parsed as a next request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, value: Any) -> None:
            self._send(status, json.dumps(value).encode("utf-8"), "application/json")

        def _handle(self, method: str) -> None:
            try:
                if check_host and not _is_loopback(_host_name(self.headers.get("Host") or "")):
                    raise RequestError(HTTPStatus.FORBIDDEN, "this server answers only requests to localhost.")
                origin = self.headers.get("Origin")
                if origin is not None and not _same_origin(origin, self.headers.get("Host") or ""):
                    # a browser names the page that sent a request; only the explorer's own page may use it
                    raise RequestError(HTTPStatus.FORBIDDEN, f"requests from {origin[:80]} are not accepted.")
                url = urlsplit(self.path)
                route = (method, url.path)
                query = parse_qs(url.query)
                if route == ("GET", "/"):
                    self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
                elif route == ("GET", "/api/info"):
                    self._json(HTTPStatus.OK, explorer.info())
                elif route == ("POST", "/api/decode"):
                    z = parse_code(_read_json(self), explorer.model.latents, explorer.max_abs)
                    self._json(HTTPStatus.OK, {"image": explorer.decode(z)})
                elif route == ("POST", "/api/encode"):
                    payload = _read_json(self)
                    if not isinstance(payload, dict) or "index" not in payload:
                        raise RequestError(HTTPStatus.BAD_REQUEST, 'the body must be a JSON object {"index": n}.')
                    size = len(explorer.require_data())
                    self._json(HTTPStatus.OK, explorer.encode(_int_field(payload["index"], "index", 0, size - 1)))
                elif route == ("GET", "/api/images"):
                    count = _query_int(query, "count", 12, 1, MAX_THUMBNAILS)
                    seed = _query_int(query, "seed", 0, 0, 2**32 - 1)
                    self._json(HTTPStatus.OK, explorer.thumbnails(count, seed))
                elif route == ("GET", "/api/sample"):
                    self._json(HTTPStatus.OK, explorer.sample(_query_int(query, "seed", None, 0, 2**32 - 1)))
                elif url.path in ("/", "/api/info", "/api/decode", "/api/encode", "/api/images", "/api/sample"):
                    raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {url.path}.")
                else:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
            except RequestError as exc:
                self._json(exc.status, {"error": exc.message})
            except CLIENT_GONE:  # nobody is left to answer (an answer to a stalled client would stall too)
                self.close_connection = True
            except Exception as exc:  # a fault of the explorer itself, not of the request
                traceback.print_exc()
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}: {exc}"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_HEAD(self) -> None:  # no body may follow a HEAD answer: close instead of keeping the connection
            self.close_connection = True
            self._handle("HEAD")

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log what escaped a request handler, unless it only says the client went away or stalled."""
        if isinstance(sys.exc_info()[1], CLIENT_GONE):
            return
        super().handle_error(request, client_address)


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server for ``explorer`` bound to ``host:port`` (port 0: any free port), not yet serving."""
    check_port(port)
    try:
        return _Server((host, port), make_handler(explorer, check_host=_is_loopback(host)))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port.") from exc


def explore(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, stream: TextIO | None = None) -> None:
    """Serve the explorer of ``run_dir`` until interrupted (Ctrl-C)."""
    stream = stream or sys.stderr
    check_port(port)  # before the model is loaded
    explorer = Explorer(run_dir)
    server = make_server(explorer, host, port)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    if not _is_loopback(host):
        print(f"betavae: warning: listening on {host}, so other machines can reach this explorer and its images.",
              file=stream)
    if explorer.data_problem:
        print(f"betavae: the run's images are not available ({explorer.data_problem}); "
              "the explorer decodes from the prior only.", file=stream)
    print(f"betavae: exploring {explorer.run_dir} at http://{shown}:{bound_port}/  (Ctrl-C to stop)", file=stream)
    try:
        server.serve_forever()
    finally:
        server.server_close()
