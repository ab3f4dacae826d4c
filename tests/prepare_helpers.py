"""Helpers for the prepare.py tests: throwaway workspaces, the module loaded from one, a loopback HF server."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]

# Small numbers so that everything runs in seconds on a CPU; VOCAB_SIZE stays a real BPE size.
TEST_CONSTANTS = {"MAX_SEQ_LEN": 32, "TIME_BUDGET": 5, "EVAL_TOKENS": 4 * 32 * 3, "VOCAB_SIZE": 512,
                  "DATASET": "pystdlib", "PROFILE": "cpu"}


def make_workspace(root: Path, **overrides) -> Path:
    """A folder with a copy of prepare.py and a constants.py of TEST_CONSTANTS (plus overrides)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "prepare.py", root / "prepare.py")
    values = {**TEST_CONSTANTS, **overrides}
    (root / "constants.py").write_text('"""Test constants."""\n' + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return root


def load_prepare(ws: Path, monkeypatch):
    """Import ws/prepare.py (with ws/constants.py) as `prepare`; monkeypatch restores sys.modules."""
    module = None
    for name in ("constants", "prepare"):
        spec = importlib.util.spec_from_file_location(name, ws / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    return module


def run_prepare_cli(ws: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prepare.py", *args], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=timeout)


_PREPARED: dict[str, Path] = {}


def prepared_cache(tmp_path_factory) -> Path:
    """A cache with pystdlib and its 512-token tokenizer, built once per test session by the real CLI."""
    if "pystdlib" not in _PREPARED:
        cache = tmp_path_factory.getbasetemp() / "prepared-cache"
        ws = make_workspace(tmp_path_factory.mktemp("prepared-ws"))
        proc = run_prepare_cli(ws, "--dataset", "pystdlib", "--cache", str(cache), "--tokenizer-chars", "3000000")
        assert proc.returncode == 0, proc.stderr
        _PREPARED["pystdlib"] = cache
    return _PREPARED["pystdlib"]


def stdlib_texts(limit_chars: int, offset: int = 0) -> list[str]:
    """Real text for fixtures: standard-library sources cut into documents of 200..3000 characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total, skipped = [], 0, 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text("utf-8", errors="replace")
        for i in range(0, len(text), 2800):
            piece = text[i:i + 200 + (len(docs) + skipped) * 7919 % 2600]
            if skipped < offset:
                skipped += 1
                continue
            docs.append(piece)
            total += len(piece)
            if total >= limit_chars:
                return docs
    return docs


def parquet_bytes(docs: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs}), buf, row_group_size=64)
    return buf.getvalue()


def shard_texts(path: Path) -> list[str]:
    return pq.read_table(path).column("text").to_pylist()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HFServer:
    """A loopback stand-in for huggingface.co: serves files under /datasets/<repo>/resolve/main/<name>,
    honours `Range: bytes=N-`, and can misbehave per file (faults consumed one per request)."""

    def __init__(self, repo: str, files: dict[str, bytes]):
        self.repo, self.files = repo, files
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def requests_for(self, name: str) -> list[str | None]:
        with self.lock:
            return [rng for n, rng in self.requests if n == name]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        prefix = f"/datasets/{self.repo}/resolve/main/"
        name = h.path[len(prefix):] if h.path.startswith(prefix) else None
        rng = h.headers.get("Range")
        with self.lock:
            self.requests.append((name, rng))
            fault = self.faults.get(name, []).pop(0) if self.faults.get(name) else None
        body = self.files.get(name)
        if body is None:
            return self._reply(h, 404, b"not found")
        if fault == "500":
            return self._reply(h, 500, b"internal error")
        if fault == "corrupt":
            return self._reply(h, 200, bytes(len(body)))  # right length, wrong bytes
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m:
            start = int(m.group(1))
            if start >= len(body):
                return self._reply(h, 416, b"", {"Content-Range": f"bytes */{len(body)}"})
        part = body[start:]
        headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"} if m else {}
        if fault == "drop":
            # Promise the whole body, send half of it, hang up.
            h.send_response(206 if m else 200)
            h.send_header("Content-Length", str(len(part)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(part[:len(part) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._reply(h, 206 if m else 200, part, headers)

    @staticmethod
    def _reply(h, code: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
