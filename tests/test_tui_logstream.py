"""tui.logstream: `\\r` progress becomes one live line, memory stays bounded, escapes are stripped."""

import tracemalloc

from tui.logstream import LogStream, collapse_cr, format_agent_line, sanitize_block, sanitize_line, strip_escapes


def test_cr_progress_is_one_live_line():
    s = LogStream()
    assert s.feed(b"loading data\n") == ["loading data"]
    for step in range(1000):
        s.feed(f"\rstep {step:05d} | loss 3.21".encode())
    assert list(s.lines) == ["loading data"]
    assert s.live == "step 00999 | loss 3.21"
    # the run ends the progress line with a newline: its last state becomes a finished line
    assert s.feed(b"\n---\nval_bpb: 0.99\n") == ["step 00999 | loss 3.21", "---", "val_bpb: 0.99"]
    assert s.live == ""


def test_chunk_boundaries_anywhere_give_the_same_result():
    data = "héllo\r\nstep 1\rstep 2\rstep 3\nä done\n\x1b[31mred\x1b[0m\npartial\rlive".encode()
    whole = LogStream()
    whole.feed(data)
    for size in (1, 2, 3, 7):
        s = LogStream()
        for i in range(0, len(data), size):
            s.feed(data[i:i + size])
        assert list(s.lines) == list(whole.lines) == ["héllo", "step 3", "ä done", "red"]
        assert s.live == whole.live == "live"


def test_trailing_cr_keeps_last_state_visible():
    s = LogStream()
    s.feed(b"step 1\rstep 2\r")
    assert s.live == "step 2"
    s.feed(b"step 3")
    assert s.live == "step 3"
    assert s.feed(b"\n") == ["step 3"]


def test_bounded_lines():
    s = LogStream(max_lines=100)
    chunk = b"".join(b"line %d\n" % i for i in range(5000))
    out = s.feed(chunk)
    assert len(out) == 100 and out[-1] == "line 4999"
    assert len(s.lines) == 100 and s.lines[0] == "line 4900"


def test_memory_bounded_over_a_million_lines():
    s = LogStream(max_lines=2000)
    block = b"".join(b"step %07d | loss 2.345678 | lr 0.04 | tok/s 1650000\n\rprogress %d" % (i, i) for i in range(10000))
    tracemalloc.start()
    try:
        for _ in range(100):  # 1,000,000 lines plus 1,000,000 \r updates
            s.feed(block)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(s.lines) == 2000 and s.lines[-1] == "progress 9998step 0009999 | loss 2.345678 | lr 0.04 | tok/s 1650000"
    assert s.live == "progress 9999"
    assert peak < 30 * 2**20  # a few MB of chunk processing, not a growing history


def test_endless_line_without_newline_is_capped():
    s = LogStream(max_partial_chars=1000, max_line_chars=500)
    for _ in range(1000):
        s.feed(b"x" * 1000)
    assert len(s._partial) <= 1000 and len(s.live) <= 500


def test_invalid_utf8_is_replaced_not_raised():
    s = LogStream()
    assert s.feed(b"bad \xff\xfe bytes\n") == ["bad \ufffd\ufffd bytes"]


def test_reset():
    s = LogStream()
    s.feed(b"a\nb")
    s.reset()
    assert not s.lines and s.live == "" and s.feed(b"c\n") == ["c"]


def test_strip_escapes():
    assert strip_escapes("\x1b[31mred\x1b[0m") == "red"
    assert strip_escapes("\x1b]0;title\x07after") == "after"
    assert strip_escapes("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert strip_escapes("a\x1b(Bb\x1bc") == "ab"  # charset escape; a lone ESC eats nothing else
    assert strip_escapes("bell\x07 bs\x08 del\x7f c1\x9b") == "bell bs del c1"
    assert strip_escapes("cut \x1b[3") == "cut "
    assert strip_escapes("[bold red]x[/] [link=http://x]y") == "[bold red]x[/] [link=http://x]y"  # markup is just text


def test_sanitize_line_and_block():
    assert sanitize_line("a\tb") == "a   b"
    assert len(sanitize_line("x" * 5000, max_chars=100)) == 100
    assert sanitize_block("+ a\x1b[1m\n- b\rc\r\n") == "+ a\nc\n"
    assert collapse_cr("a\r") == "a" and collapse_cr("\r\r") == ""


def test_format_agent_line():
    line = '{"type":"assistant","message":{"content":[{"type":"text","text":"Raise the\\nLR"},' \
           '{"type":"tool_use","name":"Edit","input":{"file_path":"train.py"}}]}}'
    out = format_agent_line(line)
    assert out.startswith("Raise the LR | [tool] Edit") and "train.py" in out
    assert format_agent_line('{"type":"result","result":"done it"}') == "[done] done it"
    assert format_agent_line("plain text") == "plain text"
    assert format_agent_line("{not json}") == "{not json}"
