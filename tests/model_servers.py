"""Loopback model servers for the agent tests: scripted Anthropic Messages and OpenAI Responses APIs, every request recorded.

A script is a list of model turns. Each turn answers one agent request (a request that offers tools);
other requests (a CLI's side calls) get a short text reply and are recorded too. A turn is:
  Turn(calls=[Call(name, input)], text=None)   the model asks for tool calls (and may say something first)
  Turn(text="...")                               the final message
  Fail(status, body)                             an HTTP error, e.g. 401 with an authentication_error
  Cut()                                          the stream starts, then the connection drops mid-response
or a function of the request body that returns one of these (to react to what the CLI sent back).

The servers listen on 127.0.0.1 on a random port, serve from threads, and shut down by themselves after
`lifetime` seconds (a test that forgets to stop one cannot leave it running).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Union

# --- what a script is made of -------------------------------------------------------------------


@dataclass
class Call:
    """One tool call: the tool's name and its input (arguments) as the CLI defines them."""

    name: str
    input: dict
    id: str = ""
    custom: bool = False  # OpenAI: a custom (freeform) tool call, input["input"] is its raw text


@dataclass
class Turn:
    calls: list[Call] = field(default_factory=list)
    text: str | None = None
    input_tokens: int | None = None  # None: an estimate from the request size
    output_tokens: int = 40


@dataclass
class Fail:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


@dataclass
class Cut:
    """Start a streamed response, then close the connection without finishing it."""


Step = Union[Turn, Fail, Cut, Callable[[dict], Union[Turn, Fail, Cut]]]


def estimate_tokens(obj) -> int:
    """About 4 characters a token; the loopback servers' count_tokens and default usage use it."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return max(1, len(text) // 4)


# --- the server ---------------------------------------------------------------------------------


class ModelServer:
    """Base: a threaded loopback HTTP server with a script, a request log and a bounded lifetime."""

    name = "model-server"

    def __init__(self, script: list[Step] | None = None, lifetime: float = 180.0, model: str = "test-model"):
        self.script: list[Step] = list(script or [])
        self.model = model
        self.requests: list[dict] = []  # every request: method, path, headers, body (JSON or None)
        self.agent_requests: list[dict] = []  # the ones a script turn answered
        self.lifetime = lifetime
        self._lock = threading.Lock()
        self._served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep pytest output clean
                pass

            def _handle(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                req = {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body,
                       "size": len(raw), "time": time.time()}
                with server._lock:
                    server.requests.append(req)
                try:
                    server.handle(self, req)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=self.name, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    # -- lifecycle

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ModelServer":
        self.thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for subclasses

    def next_step(self, req: dict) -> Turn | Fail | Cut:
        with self._lock:
            self.agent_requests.append(req)
            step = self.script.pop(0) if self.script else Turn(text="Nothing more to do.\nDESCRIPTION: no change")
        if callable(step):
            step = step(req["body"])
        return step

    def new_id(self, prefix: str) -> str:
        with self._lock:
            self._served += 1
            return f"{prefix}{self._served:04d}"

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, str(v))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def start_sse(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("cache-control", "no-cache")
        h.send_header("connection", "close")  # the end of the stream is the end of the connection
        h.end_headers()
        h.close_connection = True

    @staticmethod
    def sse(h: BaseHTTPRequestHandler, event: str, data: dict) -> None:
        h.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        h.wfile.flush()

    def handle(self, h: BaseHTTPRequestHandler, req: dict) -> None:
        raise NotImplementedError

    # -- what the tests read

    def tool_names(self, i: int = 0) -> list[str]:
        """Names of the tools offered in the i-th agent request."""
        raise NotImplementedError

    def first_request_size(self) -> int:
        return self.agent_requests[0]["size"] if self.agent_requests else 0


# --- Anthropic Messages API -----------------------------------------------------------------------

ANTHROPIC_ERRORS = {
    401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
    500: "api_error", 529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> Fail:
    """An error shaped like the real API's (its type follows the status)."""
    headers = {"request-id": "req_loopback"}
    if status == 429:
        headers["retry-after"] = "1"
    return Fail(status, {"type": "error", "error": {"type": ANTHROPIC_ERRORS.get(status, "api_error"),
                                                    "message": message}}, headers)


class AnthropicServer(ModelServer):
    """POST /v1/messages (JSON or streamed SSE), POST /v1/messages/count_tokens; other paths 404."""

    name = "anthropic-loopback"

    def __init__(self, script=None, lifetime: float = 180.0, model: str = "claude-sonnet-4-6"):
        super().__init__(script, lifetime, model)

    def tool_names(self, i: int = 0) -> list[str]:
        body = self.agent_requests[i]["body"] or {}
        return [t.get("name") for t in body.get("tools") or []]

    def handle(self, h, req):
        path = req["path"].split("?")[0]
        body = req["body"] if isinstance(req["body"], dict) else {}
        if req["method"] == "HEAD":
            h.send_response(200)
            h.send_header("content-length", "0")
            h.end_headers()
            return
        if req["method"] == "POST" and path == "/v1/messages/count_tokens":
            self.send_json(h, 200, {"input_tokens": estimate_tokens({k: body.get(k) for k in
                                                                     ("system", "messages", "tools")})})
            return
        if req["method"] != "POST" or path != "/v1/messages":
            self.send_json(h, 404, {"type": "error", "error": {"type": "not_found_error",
                                                               "message": f"no route {req['method']} {path}"}})
            return
        model = body.get("model") or self.model
        if body.get("tools"):
            step = self.next_step(req)
        else:  # a side request (a title, a quota probe): not part of the script
            step = Turn(text="ok", input_tokens=10, output_tokens=1)
        if isinstance(step, Fail):
            self.send_json(h, step.status, step.body, step.headers)
            return
        input_tokens = estimate_tokens({k: body.get(k) for k in ("system", "messages", "tools")})
        if isinstance(step, Turn) and step.input_tokens is not None:
            input_tokens = step.input_tokens
        content = []
        if isinstance(step, Turn):
            if step.text:
                content.append({"type": "text", "text": step.text})
            for c in step.calls:
                content.append({"type": "tool_use", "id": c.id or self.new_id("toolu_"), "name": c.name,
                                "input": c.input})
        stop = "tool_use" if isinstance(step, Turn) and step.calls else "end_turn"
        out_tokens = step.output_tokens if isinstance(step, Turn) else 0
        msg = {"id": self.new_id("msg_"), "type": "message", "role": "assistant", "model": model,
               "content": content, "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": input_tokens, "output_tokens": out_tokens,
                         "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        if not body.get("stream"):
            self.send_json(h, 200, msg)
            return
        self.start_sse(h)
        start = dict(msg, content=[], stop_reason=None, usage=dict(msg["usage"], output_tokens=1))
        self.sse(h, "message_start", {"type": "message_start", "message": start})
        if isinstance(step, Cut):
            self.sse(h, "content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}})
            return  # the connection closes with the message unfinished
        for i, block in enumerate(content):
            if block["type"] == "text":
                self.sse(h, "content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": {"type": "text", "text": ""}})
                self.sse(h, "content_block_delta", {"type": "content_block_delta", "index": i,
                                                    "delta": {"type": "text_delta", "text": block["text"]}})
            else:
                self.sse(h, "content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": dict(block, input={})})
                self.sse(h, "content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
            self.sse(h, "content_block_stop", {"type": "content_block_stop", "index": i})
        self.sse(h, "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": out_tokens}})
        self.sse(h, "message_stop", {"type": "message_stop"})


def anthropic_tool_results(body: dict) -> list[dict]:
    """The tool_result blocks of the last user message of a Messages request."""
    for msg in reversed((body or {}).get("messages") or []):
        if msg.get("role") == "user" and isinstance(msg.get("content"), list):
            return [b for b in msg["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    return []


def result_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "\n".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content or "")


# --- OpenAI Responses API -------------------------------------------------------------------------


def openai_error(status: int, message: str, code: str | None = None) -> Fail:
    kinds = {401: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error"}
    headers = {"x-request-id": "req_loopback"}
    if status == 429:
        headers["retry-after"] = "1"
    return Fail(status, {"error": {"message": message, "type": kinds.get(status, "invalid_request_error"),
                                   "param": None, "code": code}}, headers)


class OpenAIServer(ModelServer):
    """POST /v1/responses (streamed SSE as the Responses API sends it), GET /v1/models; other paths 404."""

    name = "openai-loopback"

    def __init__(self, script=None, lifetime: float = 180.0, model: str = "gpt-5-codex"):
        super().__init__(script, lifetime, model)

    def tool_names(self, i: int = 0) -> list[str]:
        body = self.agent_requests[i]["body"] or {}
        names = []

        def walk(tools, prefix=""):
            for t in tools or []:
                if t.get("type") == "namespace":
                    walk(t.get("tools"), t.get("name", "") + ".")
                else:
                    names.append(prefix + str(t.get("name") or t.get("type")))

        walk(body.get("tools"))
        for item in body.get("input") or []:
            if isinstance(item, dict) and item.get("type") == "additional_tools":
                walk(item.get("tools"))
        return names

    def handle(self, h, req):
        path = req["path"].split("?")[0]
        body = req["body"] if isinstance(req["body"], dict) else {}
        if req["method"] == "GET" and path == "/v1/models":
            self.send_json(h, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return
        if req["method"] != "POST" or path != "/v1/responses":
            self.send_json(h, 404, {"error": {"message": f"no route {req['method']} {path}",
                                              "type": "invalid_request_error", "code": None}})
            return
        step = self.next_step(req)
        if isinstance(step, Fail):
            self.send_json(h, step.status, step.body, step.headers)
            return
        model = body.get("model") or self.model
        rid = self.new_id("resp_")
        self.start_sse(h)
        base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model,
                "status": "in_progress", "output": []}
        self.sse(h, "response.created", {"type": "response.created", "response": base})
        if isinstance(step, Cut):
            return
        output = []
        if step.text:
            output.append({"type": "message", "id": self.new_id("msg_"), "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": step.text, "annotations": []}]})
        for c in step.calls:
            call_id = c.id or self.new_id("call_")
            if c.custom:
                output.append({"type": "custom_tool_call", "id": self.new_id("ctc_"), "call_id": call_id,
                               "name": c.name, "input": c.input["input"], "status": "completed"})
            else:
                output.append({"type": "function_call", "id": self.new_id("fc_"), "call_id": call_id,
                               "name": c.name, "arguments": json.dumps(c.input), "status": "completed"})
        for i, item in enumerate(output):
            self.sse(h, "response.output_item.added", {"type": "response.output_item.added", "output_index": i,
                                                       "item": item})
            if item["type"] == "message":
                self.sse(h, "response.output_text.delta", {"type": "response.output_text.delta",
                                                           "item_id": item["id"], "output_index": i,
                                                           "content_index": 0, "delta": step.text})
            self.sse(h, "response.output_item.done", {"type": "response.output_item.done", "output_index": i,
                                                      "item": item})
        input_tokens = step.input_tokens if step.input_tokens is not None else estimate_tokens(body.get("input"))
        usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": step.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": input_tokens + step.output_tokens}
        self.sse(h, "response.completed", {"type": "response.completed",
                                           "response": dict(base, status="completed", output=output, usage=usage)})


def openai_tool_outputs(body: dict) -> list[dict]:
    """The function_call_output / custom_tool_call_output items of a Responses request, in order."""
    return [i for i in (body or {}).get("input") or []
            if isinstance(i, dict) and i.get("type") in ("function_call_output", "custom_tool_call_output")]
