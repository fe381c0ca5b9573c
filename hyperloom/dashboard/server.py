"""The dashboard process: a broker poller, an optional squeue poller, and a small HTTP server.

Threads, one job each: the poller owns the broker connection (a Client) and
feeds snapshots to the model; the squeue poller only runs squeue; HTTP
handler threads render the model's page data to JSON when a page asks (at
most once per snapshot, under the model's lock), so with no page open the
dashboard does no rendering at all. A page that is closed, reloaded or opened
ten times costs the broker nothing: only the poller talks to it, at its own pace.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from ..client import Client
from ..errors import LoomException
from . import page, slurm
from .model import DashboardModel

log = logging.getLogger("hyperloom.dashboard")


@dataclass(frozen=True)
class DashboardConfig:
    broker_host: str
    broker_port: int
    host: str = "127.0.0.1"          # where the page is served: loopback unless asked
    port: int = 8787                 # 0 picks a free port
    secret_file: str | None = None   # CURVE to the broker; the page then needs a token
    token: str | None = None
    interval: float = 0.5            # seconds between snapshots
    slurm_job_name: str | None = None
    slurm_interval: float = 5.0
    connect_timeout: float = 10.0


class Dashboard:
    def __init__(self, config: DashboardConfig):
        self.config = config
        broker = f"{config.broker_host}:{config.broker_port}"
        self.model = DashboardModel(broker, config.slurm_job_name)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.page = page.render_page(broker, config.token, bool(config.slurm_job_name)).encode()
        self.files = page.static_files()
        self._data: bytes | None = None  # page data as JSON, rendered on demand
        self.http = ThreadingHTTPServer((config.host, config.port), self._handler_class())
        self.http.daemon_threads = True
        self.threads = [threading.Thread(target=self._poll_broker, name="broker-poller",
                                         daemon=True),
                        threading.Thread(target=self.http.serve_forever, name="http",
                                         daemon=True)]
        if config.slurm_job_name:
            self.threads.append(threading.Thread(target=self._poll_slurm, name="squeue",
                                                 daemon=True))

    @property
    def url(self) -> str:
        # The socket's own address (server_address holds the same, typed as maybe bytes).
        host, port = self.http.socket.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        query = f"?token={self.config.token}" if self.config.token else ""
        return f"http://{host}:{port}/{query}"

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()
        for thread in self.threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------ pollers

    def _poll_broker(self):
        config = self.config
        while not self.stopping.is_set():
            try:
                client = Client(config.broker_host, config.broker_port,
                                connect_timeout=config.connect_timeout,
                                secret_file=config.secret_file)
            except LoomException as error:
                self._update(self.model.on_broker_error, str(error))
                self.stopping.wait(2.0)
                continue
            try:
                self._update(self.model.on_connected, client.number)
                while not self.stopping.is_set():
                    snapshot = client.snapshot(self.model.seq)
                    self._update(self.model.on_snapshot, snapshot, time.time())
                    self.stopping.wait(config.interval)
            except Exception as error:
                # the poller tries again: a dashboard outlives its broker's restarts
                if not isinstance(error, LoomException):
                    log.exception("unexpected error while asking the broker")
                log.warning("lost the broker: %s", error)
                self._update(self.model.on_broker_error, str(error))
                self.stopping.wait(2.0)
            finally:
                client.close()

    def _poll_slurm(self):
        while not self.stopping.is_set():
            jobs, error = slurm.query_jobs(self.config.slurm_job_name)
            self._update(self.model.on_slurm, jobs, error, time.time())
            self.stopping.wait(self.config.slurm_interval)

    def _update(self, change, *args):
        with self.lock:
            change(*args)
            self._data = None

    def page_data(self) -> bytes:
        with self.lock:
            if self._data is None:
                self._data = json.dumps(self.model.page_data()).encode()
            return self._data

    # ------------------------------------------------------------ HTTP

    def _authorized(self, query: dict) -> bool:
        if self.config.token is None:
            return True
        given = query.get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.config.token.encode())

    def _handler_class(self):
        dashboard = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path in dashboard.files:
                    self._send(200, _content_type(url.path), dashboard.files[url.path].read_bytes(),
                               cache=True)
                elif url.path not in ("/", "/data.json"):
                    self._send(404, "text/plain", b"not found\n")
                elif not dashboard._authorized(query):
                    if url.path == "/":
                        self._send(403, "text/html", page.token_form("token" in query).encode())
                    else:
                        self._send(403, "text/plain", b"a token is required\n")
                elif url.path == "/":
                    self._send(200, "text/html", dashboard.page)
                else:
                    self._send(200, "application/json", dashboard.page_data())

            def _send(self, status, content_type, body, cache=False):
                self.send_response(status)
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page was closed meanwhile

            def log_message(self, format, *args):
                log.debug("%s %s", self.address_string(), format % args)

        return Handler


def _content_type(path: str) -> str:
    if path.endswith(".js"):
        return "text/javascript"
    if path.endswith(".css"):
        return "text/css"
    return "text/html"
