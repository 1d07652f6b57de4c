"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for fast tests of the HTTP client (a real socket, no mocks)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, str], Any]  # status, headers, JSON body (or a str sent as-is)
CUT_HEADER = "X-Stub-Cut"  # a reply header (not sent): declare the full Content-Length, send only this many bytes


class StubServer:
    """Answers each POST with the next scripted reply, or with ``handler(path, body)`` when the script is empty.

    Records every request (path, headers, body) and the highest number of requests in flight at once.
    """

    def __init__(self, handler: Callable[[str, dict[str, Any]], Reply] | None = None, delay: float = 0.0) -> None:
        self.script: list[Reply] = []
        self.handler = handler
        self.delay = delay
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub.requests.append((self.path, dict(self.headers), body))
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    reply = stub.script.pop(0) if stub.script else None
                try:
                    if stub.delay:
                        time.sleep(stub.delay)
                    if reply is None:
                        assert stub.handler is not None, "stub server has no reply left"
                        reply = stub.handler(self.path, body)
                    status, headers, payload = reply
                    data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                    headers = dict(headers)
                    cut = headers.pop(CUT_HEADER, None)  # send this many bytes of the body, then hang up
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if cut is not None:
                        self.wfile.write(data[: int(cut)])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def chat_body(
    text: str, *, prompt_tokens: int = 10, completion_tokens: int = 3, top: dict[str, float] | None = None
) -> dict:
    """An OpenAI chat completion body; ``top`` (token -> logprob) adds logprobs for one generated token."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": text},
    }
    if top is not None:
        first = max(top, key=top.__getitem__)
        choice["logprobs"] = {
            "content": [
                {
                    "token": first,
                    "logprob": top[first],
                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()],
                }
            ]
        }
    return {
        "choices": [choice],
        "model": "stub",
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }
