"""A loopback HTTP server that speaks enough of the Anthropic Messages API for the agent tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


def tool_use(name: str, args: dict, n: int) -> dict:
    return {"type": "tool_use", "id": f"toolu_{n:04d}", "name": name, "input": args}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def message(content: list[dict], stop_reason: str, model: str = "claude-sonnet-4-5",
            input_tokens: int = 1000, output_tokens: int = 100) -> dict:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}


class FakeAnthropic:
    """Answers POST /v1/messages from a script: each entry is a response dict or a function of the request.

    Every request (path, headers, JSON body) is recorded for the test to inspect. A status other than
    200 can be scripted as (status, body).
    """

    def __init__(self, script: list[dict | tuple | Callable[[dict], dict]]):
        self.script = list(script)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with fake._lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    entry = fake.script.pop(0) if fake.script else message([text("done")], "end_turn")
                status = 200
                if callable(entry):
                    entry = entry(body)
                if isinstance(entry, tuple):
                    status, entry = entry
                if self.path.split("?")[0] != "/v1/messages":
                    status, entry = 404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}}
                data = json.dumps(entry).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeAnthropic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
