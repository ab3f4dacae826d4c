"""What the claude and codex wrappers share: the CliAgent base, the run harness, the usage record and the error kinds.

A wrapper (`python -m core.agents.claude --run`, `... codex --run`) runs in the agent's cwd (the workspace
or its worktree). It reads the prompt itself and hands it to the CLI on stdin, so the CLI needs no access
outside its cwd; it runs the CLI with a private, throw-away config home (fresh context, no memory, no
user settings); it copies every stream line to stdout (agent.log); and at the end it writes
$AUTORESEARCH_USAGE_FILE (always, errors included) and, on success, $AUTORESEARCH_PROPOSAL_FILE from the
agent's final message. An error is one sentence on stderr, an `error` and `error_kind` in the usage file
and a non-zero exit; it is never written as the description.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import psutil

from ..errors import UserError
from ..procs import descendants, kill_processes
from ..workspace import atomic_write_json
from .base import Agent, AgentContext

ERROR_KINDS = ("auth", "rate_limit", "network", "version", "other")

# Appended to the engine's prompt: a CLI agent may write train.py only, so the wrapper records the description.
class AgentError(Exception):
    """A failure a person can act on: one sentence, and which kind it is (see ERROR_KINDS)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind if kind in ERROR_KINDS else "other"
        self.message = one_sentence(message)


def one_sentence(text: str, limit: int = 300) -> str:
    """Whitespace folded, control characters dropped, cut at `limit`, ending with a full stop."""
    text = "".join(ch for ch in str(text) if ch.isprintable() or ch in " \t\n")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return text if text.endswith((".", "!", "?", "...")) else text + "."


@dataclass
class Usage:
    """The usage file's schema: what the engine reads from $AUTORESEARCH_USAGE_FILE."""

    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False
    turns: int | None = None
    error: str | None = None
    error_kind: str | None = None
    extra: dict = field(default_factory=dict)  # CLI-specific facts (cached tokens, denials, tools)

    def write(self) -> None:
        path = os.environ.get("AUTORESEARCH_USAGE_FILE")
        if path:
            atomic_write_json(Path(path), asdict(self))


# --- the agent object the engine holds ----------------------------------------------------------

class CliAgent(Agent):
    """An agent that is a vendor CLI, run through this package's wrapper module (`python -m MODULE --run`)."""

    module = ""
    binary = ""
    missing = ""
    hand_in = "final_message"

    def __init__(self, config: dict):
        if not find_binary(self.binary):
            raise UserError(self.missing)
        self.model = config.get("model") or None

    def wrapper_args(self) -> list[str]:
        return []

    def command(self, ctx: AgentContext) -> list[str]:
        argv = [sys.executable, "-m", self.module, "--run", *self.wrapper_args()]
        if self.model:
            argv += ["--model", self.model]
        return argv

    def describe(self) -> str:
        return f"{self.name} ({self.model})" if self.model else self.name


def find_binary(name: str) -> str | None:
    return shutil.which(name)


# --- versions -----------------------------------------------------------------------------------

def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(x) for x in m.groups()) if m else None


def cli_version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentError("other", f"cannot run `{binary} --version` ({getattr(e, 'strerror', None) or e})") from None
    return parse_version(out.stdout + out.stderr)


def check_version(label: str, version: tuple[int, ...] | None, lowest: tuple[int, ...], below: tuple[int, ...],
                  install: str) -> None:
    """AgentError(version) outside [lowest, below); AUTORESEARCH_ALLOW_ANY_CLI_VERSION=1 lets a newer one run."""
    shown = ".".join(map(str, version)) if version else "of unknown version"
    want = f"{'.'.join(map(str, lowest))} up to below {'.'.join(map(str, below))}"
    if version is None or version < lowest:
        raise AgentError("version", f"{label} {shown} is too old for autoresearch (it needs {want}); "
                                    f"install the tested version: {install}")
    if version >= below and os.environ.get("AUTORESEARCH_ALLOW_ANY_CLI_VERSION") != "1":
        raise AgentError("version", f"{label} {shown} is newer than the versions autoresearch was checked "
                                    f"with ({want}); install the tested version ({install}) or set "
                                    "AUTORESEARCH_ALLOW_ANY_CLI_VERSION=1 to try it")


# --- prompt and description -----------------------------------------------------------------------

def read_prompt() -> str:
    path = os.environ.get("AUTORESEARCH_PROMPT_FILE")
    if not path:
        raise UserError("AUTORESEARCH_PROMPT_FILE is not set; this wrapper is run by `autoresearch loop`.")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read the prompt file {path} ({e.strerror}).") from None


def write_proposal(description: str | None) -> None:
    """The description into $AUTORESEARCH_PROPOSAL_FILE (one line, at most 300 characters)."""
    proposal = os.environ.get("AUTORESEARCH_PROPOSAL_FILE")
    if not proposal or not description or not description.strip():
        return
    p = Path(proposal)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(" ".join(description.split())[:300] + "\n", encoding="utf-8")


# --- a private home for the CLI's own state -------------------------------------------------------

@contextmanager
def private_home(prefix: str) -> Iterator[Path]:
    """A fresh folder for the CLI's config and state, removed afterwards (nothing carries over).

    It lives beside the experiment's files (outside the agent's cwd once agents run in worktrees), else
    in the user's cache: Codex refuses to install its helpers under /tmp.
    """
    proposal = os.environ.get("AUTORESEARCH_PROPOSAL_FILE")
    base = Path(proposal).parent if proposal else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoresearch"
    base.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        (home / "tmp").mkdir()
        yield home
    finally:
        kill_leftovers(str(home))
        shutil.rmtree(home, ignore_errors=True)


def kill_leftovers(marker: str) -> int:
    """Kill processes the CLI left running whose command line names its private home.

    Codex 0.169 starts sandbox helpers (`bwrap --new-session ... --codex-run-as-fs-helper`) that leave
    our process group and outlive it; their arguments name files in CODEX_HOME. They ignore SIGTERM.
    """
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and any(marker in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return kill_processes(found, grace=1.0) if found else 0


# --- running the CLI ------------------------------------------------------------------------------

class Stop(Exception):
    """Raised by an event handler to end the CLI at once (e.g. an authentication error it would retry)."""

    def __init__(self, error: AgentError):
        super().__init__(error.message)
        self.error = error


def stream_json(argv: list[str], on_event: Callable[[dict], None], *, stdin_text: str, env: dict[str, str],
                on_stderr: Callable[[str], None] | None = None) -> int:
    """Run argv with the prompt on stdin, copy its stdout to ours line by line and hand each JSON line to
    on_event; stderr is copied too (and each line given to on_stderr). A handler that raises Stop ends the
    CLI and its descendants at once and the Stop is re-raised after they are gone.
    """
    try:
        # in our process group: the engine's kill of the group on timeout or abort takes the CLI with us
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE,
                                env=env)
    except OSError as e:
        raise AgentError("other", f"cannot start {argv[0]} ({e.strerror}); check that the CLI is installed "
                                  "and executable") from None
    out = sys.stdout.buffer

    def feed_stdin() -> None:
        try:
            proc.stdin.write(stdin_text.encode("utf-8"))
            proc.stdin.close()
        except OSError:  # the CLI exited before reading its prompt; its output says why
            pass

    def copy_stderr() -> None:
        for raw in _lines(proc.stderr):
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()
            if on_stderr is not None:
                on_stderr(raw.decode("utf-8", "replace"))

    threads = [threading.Thread(target=feed_stdin, daemon=True), threading.Thread(target=copy_stderr, daemon=True)]
    for t in threads:
        t.start()
    stop: Stop | None = None
    try:
        for raw in _lines(proc.stdout):
            out.write(raw)
            out.flush()
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                on_event(event)
    except Stop as s:
        stop = s
        _kill(proc)
    rc = proc.wait()
    for t in threads:
        t.join(timeout=5)
    if stop is not None:
        raise stop
    return rc


def _kill(proc: subprocess.Popen) -> None:
    """The CLI and everything it started (a sandbox helper, a tool's shell)."""
    tree = [proc.pid, *descendants(proc.pid)]
    kill_processes([p for p in (_process(pid) for pid in tree) if p is not None], grace=2.0)


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _lines(stream) -> Iterable[bytes]:
    for raw in iter(stream.readline, b""):
        yield raw if raw.endswith(b"\n") else raw + b"\n"


def child_env(overrides: dict[str, str], drop: Iterable[str] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in set(drop)}
    env.update(overrides)
    return env


# --- the wrapper's main ---------------------------------------------------------------------------

def run_wrapper(label: str, body: Callable[[Usage], None]) -> int:
    """Run body(usage), which fills the usage record as it learns things; write the usage file whatever
    happens; one sentence on stderr and exit 1 on error."""
    usage = Usage()
    try:
        body(usage)
    except Stop as s:
        usage.error, usage.error_kind = s.error.message, s.error.kind
    except AgentError as e:
        usage.error, usage.error_kind = e.message, e.kind
    except UserError as e:
        usage.error, usage.error_kind = one_sentence(str(e)), "other"
    except KeyboardInterrupt:
        usage.write()
        return 130
    usage.write()
    if usage.error:
        print(f"{label}: {usage.error}", file=sys.stderr, flush=True)
        return 1
    return 0
