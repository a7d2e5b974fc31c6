"""The page server: serves ``page.html`` on ``http://localhost:PORT`` and relays commands to it.

The page long-polls ``GET /next`` for a command (``{"id", "op": "create"|"get", "options"}``,
options in the WebAuthn JSON form) and posts what came out to ``POST /result``. ``PageServer.run``
queues one command; ``PageServer.result`` waits for its answer. A threaded ``http.server`` on
127.0.0.1 port 0, stopped with the test.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PAGE = Path(__file__).with_name("page.html")
POLL_SECONDS = 1.0


class PageServer:
    def __init__(self) -> None:
        self._commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self._results: dict[int, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        self._sent: list[int] = []
        self.polls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: the page polls all the time

            def _send(self, status: int, body: bytes = b"", kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page went away mid-poll (Chromium is stopping)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/":
                    self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
                elif self.path == "/next":
                    with server._changed:
                        server.polls += 1
                        server._changed.notify_all()
                    try:
                        command = server._commands.get(timeout=POLL_SECONDS)
                    except queue.Empty:
                        self._send(204)
                        return
                    self._send(200, json.dumps(command).encode(), "application/json")
                else:
                    self._send(404)

            def do_POST(self) -> None:  # noqa: N802
                if self.path != "/result":
                    self._send(404)
                    return
                length = int(self.headers.get("Content-Length", "0"))
                result = json.loads(self.rfile.read(length))
                with server._changed:
                    server._results[int(result["id"])] = result
                    server._changed.notify_all()
                self._send(204)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://localhost:{self.port}/"
        self.origin = f"http://localhost:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> PageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def wait_for_page(self, timeout: float) -> bool:
        """True once the page has polled at least once (it is loaded and running)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.polls > 0, timeout)

    def run(self, op: str, options: dict[str, Any]) -> int:
        command_id = next(self._ids)
        self._sent.append(command_id)
        self._commands.put({"id": command_id, "op": op, "options": options})
        return command_id

    def pending(self) -> list[int]:
        """Commands sent to the page that have no result yet."""
        with self._changed:
            return [i for i in self._sent if i not in self._results]

    def result(self, command_id: int, timeout: float) -> dict[str, Any] | None:
        with self._changed:
            self._changed.wait_for(lambda: command_id in self._results, timeout)
            return self._results.get(command_id)
