"""Pure log handling: byte chunks with `\\r` progress -> finished lines + one live line; escape stripping."""

from __future__ import annotations

import codecs
import json
import re
from collections import deque

# Terminal escape sequences and control characters. Untrusted output (trainer, agent, diffs) must never
# move the cursor, set the window title, or smuggle colours into the dashboard: all of it is removed.
_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\|$)"  # OSC ... BEL or ST (e.g. set title), or cut off at the end
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\|$)"  # DCS / PM / APC / SOS strings
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI (colours, cursor movement)
    r"|\x1b\[[0-?]*[ -/]*$"  # CSI cut off at the end of the text
    r"|\x1b[ -/]*[0-~]"  # two-byte escapes (charset selection, RIS, ...)
    r"|\x1b"  # a lone ESC
    r"|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]"  # C0 (except \t \n \r), DEL, C1
)


def strip_escapes(text: str) -> str:
    """Remove ANSI/OSC escape sequences and control characters (keeps \\t, \\n and \\r)."""
    if "\x1b" not in text and not _has_controls(text):
        return text  # the common case, checked without running the big regex
    return _ESCAPES.sub("", text)


_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def _has_controls(text: str) -> bool:
    return _CONTROLS.search(text) is not None


def sanitize_line(text: str, max_chars: int = 2000) -> str:
    """One display line: escapes stripped, tabs expanded, no CR/LF, bounded length."""
    text = strip_escapes(text).replace("\r", "").replace("\n", " ")
    if "\t" in text:
        text = text.expandtabs(4)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text


def sanitize_block(text: str) -> str:
    """Multi-line untrusted text (a diff, a transcript): escapes stripped; a `\\r` line keeps its last state."""
    return "\n".join(collapse_cr(line) for line in strip_escapes(text).split("\n"))


def collapse_cr(segment: str) -> str:
    """What a terminal leaves on screen for a line rewritten with `\\r`: its last non-empty state."""
    if "\r" not in segment:
        return segment
    for piece in reversed(segment.split("\r")):
        if piece:
            return piece
    return ""


class LogStream:
    """Turns a byte stream into finished lines (bounded deque) and one live line.

    A trainer rewrites its progress line with `\\r` hundreds of times a second; those rewrites become
    the single `live` line and never pile up as lines. Memory is bounded by `max_lines` whatever the
    input: only the newest lines are kept, and a line without any newline is capped.
    """

    def __init__(self, max_lines: int = 2000, max_line_chars: int = 2000, max_partial_chars: int = 65536):
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.live: str = ""
        self.max_lines = max_lines
        self.max_line_chars = max_line_chars
        self.max_partial_chars = max_partial_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def reset(self) -> None:
        self.lines.clear()
        self.live = ""
        self._decoder.reset()
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        """Add a chunk; return the lines it finished (only the newest `max_lines` of them)."""
        text = self._decoder.decode(data)
        if not text:
            return []
        return self._feed_text(text)

    def _feed_text(self, text: str) -> list[str]:
        parts = (self._partial + text).split("\n")
        partial = parts.pop()
        # Lines that would fall out of the deque anyway are not even sanitised: at 10,000 lines/s the
        # UI needs only what it can show.
        if len(parts) > self.max_lines:
            parts = parts[-self.max_lines:]
        finished = [sanitize_line(collapse_cr(p), self.max_line_chars) for p in parts]
        self.lines.extend(finished)
        self._partial = self._compact_partial(partial)
        self.live = sanitize_line(collapse_cr(self._partial), self.max_line_chars)
        return finished

    def _compact_partial(self, partial: str) -> str:
        """Keep only what can still matter of the unfinished line (its latest `\\r` state)."""
        if "\r" in partial:
            pieces = partial.split("\r")
            last = pieces[-1]
            if not last:  # ends with \r: the previous state stays visible until overwritten
                prev = next((p for p in reversed(pieces) if p), "")
                partial = prev + "\r"
            else:
                prev = next((p for p in reversed(pieces[:-1]) if p), "")
                # a shorter rewrite leaves the old state's tail, but progress lines pad themselves; keep it simple
                partial = "\r" + last if prev else last
        if len(partial) > self.max_partial_chars:
            partial = partial[-self.max_partial_chars:]
        return partial


def format_agent_line(line: str) -> str:
    """A Claude Code / Codex stream-json line becomes readable text; anything else is returned unchanged."""
    s = line.strip()
    if not (s.startswith("{") and s.endswith("}")):
        return line
    try:
        obj = json.loads(s)
    except ValueError:
        return line
    if not isinstance(obj, dict):
        return line
    kind = obj.get("type")
    msg = obj.get("message") if isinstance(obj.get("message"), dict) else None
    if msg is not None and isinstance(msg.get("content"), list):
        out = []
        for block in msg["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and block.get("text"):
                out.append(str(block["text"]))
            elif block.get("type") == "tool_use":
                inp = block.get("input")
                brief = json.dumps(inp, ensure_ascii=False)[:200] if inp is not None else ""
                out.append(f"[tool] {block.get('name', '?')} {brief}")
            elif block.get("type") == "tool_result":
                content = block.get("content")
                text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
                out.append(f"[result] {text[:200]}")
        if out:
            return " | ".join(" ".join(o.split()) for o in out)
    if kind == "result" and "result" in obj:
        return f"[done] {' '.join(str(obj['result']).split())}"
    for key in ("text", "content", "message"):
        if isinstance(obj.get(key), str):
            return f"[{kind or key}] {' '.join(obj[key].split())}"
    return line
