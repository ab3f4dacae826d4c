"""Agents through their real subprocess paths: fake claude/codex CLIs on PATH, a loopback Messages API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_anthropic_server import FakeAnthropic, message, text, tool_use

from core.agents import AGENTS, make_agent, resolve_auto
from core.agents.anthropic_agent import estimate_cost
from core.agents.base import AgentContext, agent_env
from core.errors import UserError
from core.workspace import Workspace

TRAIN_PY = textwrap.dedent("""\
    \"\"\"toy trainer\"\"\"
    DEPTH = 8               # number of layers
    MATRIX_LR = 0.04        # Muon lr
    EMBEDDING_LR = 0.6      # AdamW lr for embeddings
    print("training")
""")
SECRET = "sk-ant-api03-TESTSECRET-0123456789abcdef"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text(TRAIN_PY)
    (root / "program.md").write_text("# program\nlower val_bpb\n")
    (root / "prepare.py").write_text("# read-only\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return Workspace.at(root)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch) -> Path:
    """A folder first on PATH for fake CLIs; the real claude/codex (if any) are hidden behind it."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    return d


def ctx_for(ws: Workspace, prompt: str = "improve train.py") -> AgentContext:
    exp = ws.experiment_dir("0001")
    exp.mkdir(parents=True)
    (exp / "prompt.md").write_text(prompt)
    return AgentContext(workspace=ws, exp_id="0001", prompt=prompt, prompt_file=exp / "prompt.md",
                        proposal_file=exp / "proposal.txt", usage_file=exp / "usage.json",
                        log_file=exp / "agent.log", timeout=60)


def run_agent(agent, ctx: AgentContext, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """What the engine does: argv from the agent, cwd = workspace, env = ours + AUTORESEARCH_* + agent.env."""
    env = dict(os.environ)
    env.update(agent_env(ctx))
    env.update(agent.env(ctx))
    env.update(extra_env or {})
    proc = subprocess.run(agent.command(ctx), cwd=ctx.workspace.root, env=env, capture_output=True, timeout=60)
    ctx.log_file.write_bytes(proc.stdout + proc.stderr)
    return proc


def write_fake(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


FAKE_CLAUDE = """\
    import json, os, sys, pathlib
    pathlib.Path(os.environ["FAKE_ARGV_FILE"]).write_text(json.dumps(sys.argv[1:]))
    prompt = sys.argv[sys.argv.index("-p") + 1]
    def emit(obj):
        print(json.dumps(obj), flush=True)
    emit({"type": "system", "subtype": "init", "model": "claude-sonnet-4-6", "tools": ["Read", "Edit"]})
    p = pathlib.Path("train.py")
    p.write_text(p.read_text().replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"))
    emit({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t1", "name": "Edit", "input": {"file_path": "train.py"}}]}})
    emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "Done."}]}})
    emit({"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
          "result": "I raised the Muon learning rate.\\nDESCRIPTION: MATRIX_LR 0.04 -> 0.05 (faster start)",
          "total_cost_usd": 0.0421,
          "usage": {"input_tokens": 1200, "cache_read_input_tokens": 300, "output_tokens": 250}})
    print("prompt-len", len(prompt), file=sys.stderr)
"""


def test_claude_agent_runs_the_cli_with_edit_tools_only(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "claude", FAKE_CLAUDE)
    agent = make_agent("claude", {"model": "claude-sonnet-4-6"})
    ctx = ctx_for(ws, "# prompt\nmake it better")
    argv_file = tmp_path / "argv.json"
    proc = run_agent(agent, ctx, {"FAKE_ARGV_FILE": str(argv_file)})
    assert proc.returncode == 0, proc.stderr.decode()

    argv = json.loads(argv_file.read_text())
    assert "--dangerously-skip-permissions" not in argv
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    allowed = argv[argv.index("--allowedTools") + 1].split(",")
    assert set(allowed) <= {"Read", "Edit", "Write", "Glob", "Grep"} and "Edit" in allowed
    assert "Bash" in argv[argv.index("--disallowedTools") + 1].split(",")
    assert argv[argv.index("--output-format") + 1] == "stream-json" and "--verbose" in argv
    assert argv[argv.index("--model") + 1] == "claude-sonnet-4-6"
    prompt = argv[argv.index("-p") + 1]
    assert prompt.startswith("# prompt\nmake it better")
    assert ".autoresearch/experiments/0001/proposal.txt" in prompt  # concrete path for a CLI without a shell

    assert "MATRIX_LR = 0.05        # Muon lr" in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text().strip() == "MATRIX_LR 0.04 -> 0.05 (faster start)"
    usage = json.loads(ctx.usage_file.read_text())
    assert usage == {"model": "claude-sonnet-4-6", "input_tokens": 1500, "output_tokens": 250,
                     "cost_usd": 0.0421, "turns": 3}
    log = ctx.log_file.read_text()
    assert '"type": "result"' in log and '"type": "system"' in log  # the stream lands in agent.log


def test_claude_agent_keeps_a_description_the_agent_wrote_itself(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "claude", FAKE_CLAUDE.replace(
        'p = pathlib.Path("train.py")',
        'pathlib.Path(os.environ["AUTORESEARCH_PROPOSAL_FILE"]).write_text("own words\\n")\n'
        '    p = pathlib.Path("train.py")'))
    agent = make_agent("claude", {})
    ctx = ctx_for(ws)
    proc = run_agent(agent, ctx, {"FAKE_ARGV_FILE": str(tmp_path / "argv.json")})
    assert proc.returncode == 0
    assert ctx.proposal_file.read_text() == "own words\n"
    assert "--model" not in json.loads((tmp_path / "argv.json").read_text())


def test_claude_agent_error_result_fails(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "claude", """\
        import json
        print(json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True,
                          "usage": {"input_tokens": 5, "output_tokens": 1}, "total_cost_usd": 0.001}))
    """)
    ctx = ctx_for(ws)
    proc = run_agent(make_agent("claude", {}), ctx)
    assert proc.returncode != 0
    assert b"error_max_turns" in proc.stderr
    assert json.loads(ctx.usage_file.read_text())["cost_usd"] == 0.001


def test_missing_claude_cli_is_a_user_error(bin_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(bin_dir))  # nothing else on PATH
    with pytest.raises(UserError, match="the claude CLI is not on PATH; install Claude Code or use --agent"):
        make_agent("claude", {})


FAKE_CODEX = """\
    import json, os, sys, pathlib
    pathlib.Path(os.environ["FAKE_ARGV_FILE"]).write_text(json.dumps(sys.argv[1:]))
    def emit(obj):
        print(json.dumps(obj), flush=True)
    emit({"type": "thread.started", "thread_id": "th_1"})
    emit({"type": "turn.started"})
    p = pathlib.Path("train.py")
    p.write_text(p.read_text().replace("DEPTH = 8 ", "DEPTH = 9 "))
    emit({"type": "item.completed", "item": {"id": "i1", "type": "file_change", "changes": []}})
    emit({"type": "item.completed", "item": {"id": "i2", "type": "agent_message",
          "text": "Deeper model.\\nDEPTH 8 -> 9"}})
    emit({"type": "turn.completed", "usage": {"input_tokens": 900, "cached_input_tokens": 100,
          "output_tokens": 80}})
"""


def test_codex_agent_runs_exec_full_auto(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "codex", FAKE_CODEX)
    agent = make_agent("codex", {"model": "gpt-5-codex"})
    ctx = ctx_for(ws, "codex prompt")
    argv_file = tmp_path / "argv.json"
    proc = run_agent(agent, ctx, {"FAKE_ARGV_FILE": str(argv_file)})
    assert proc.returncode == 0, proc.stderr.decode()
    argv = json.loads(argv_file.read_text())
    assert argv[:3] == ["exec", "--full-auto", "--json"]
    assert "--dangerously-bypass-approvals-and-sandbox" not in argv
    assert argv[argv.index("--model") + 1] == "gpt-5-codex"
    assert argv[-1].startswith("codex prompt")
    assert "DEPTH = 9 " in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text().strip() == "DEPTH 8 -> 9"
    usage = json.loads(ctx.usage_file.read_text())
    assert usage["input_tokens"] == 900 and usage["output_tokens"] == 80 and usage["cost_usd"] is None


def test_missing_codex_cli_is_a_user_error(bin_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UserError, match="the codex CLI is not on PATH"):
        make_agent("codex", {})


# --- anthropic ----------------------------------------------------------------------------------

def test_anthropic_agent_tool_loop_against_loopback_api(ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    script = [
        message([text("Let me look at the trainer."), tool_use("read_file", {"path": "prepare.py"}, 1)],
                "tool_use", input_tokens=2000, output_tokens=50),
        message([tool_use("read_file", {"path": "../outside.txt"}, 2)], "tool_use"),
        message([tool_use("edit_train_py", {"old_str": "EMBEDDING_LR = 0.6", "new_str": "EMBEDDING_LR = 0.8"}, 3)],
                "tool_use"),
        message([tool_use("submit", {"description": "EMBEDDING_LR 0.6 -> 0.8: embeddings learn faster"}, 4)],
                "tool_use", input_tokens=3000, output_tokens=40),
    ]
    (ws.root.parent / "outside.txt").write_text("private")
    with FakeAnthropic(script) as srv:
        agent = make_agent("anthropic", {"model": "claude-sonnet-4-6"})
        ctx = ctx_for(ws, "PROMPT-MARKER")
        proc = run_agent(agent, ctx, {"ANTHROPIC_BASE_URL": srv.url})
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(srv.requests) == 4
    first = srv.requests[0]["body"]
    assert first["model"] == "claude-sonnet-4-6"
    assert {t["name"] for t in first["tools"]} >= {"read_file", "edit_train_py", "submit"}
    assert "PROMPT-MARKER" in first["messages"][0]["content"]
    assert "MATRIX_LR = 0.04" in first["messages"][0]["content"]  # train.py comes with the first message
    # tool results went back with the right ids; the outside read was refused, prepare.py was read
    results = srv.requests[1]["body"]["messages"][-1]["content"]
    assert results[0]["tool_use_id"] == "toolu_0001" and results[0]["content"] == "# read-only\n"
    refused = srv.requests[2]["body"]["messages"][-1]["content"][0]
    assert refused["is_error"] is True and "outside the workspace" in refused["content"]
    assert "private" not in json.dumps(srv.requests[2]["body"])

    assert "EMBEDDING_LR = 0.8      # AdamW" in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text().strip() == "EMBEDDING_LR 0.6 -> 0.8: embeddings learn faster"
    usage = json.loads(ctx.usage_file.read_text())
    assert usage["input_tokens"] == 2000 + 1000 + 1000 + 3000
    assert usage["output_tokens"] == 50 + 100 + 100 + 40
    assert usage["cost_usd"] == pytest.approx((7000 * 3 + 290 * 15) / 1e6)
    for blob in (proc.stdout, proc.stderr, ctx.usage_file.read_bytes(), ctx.proposal_file.read_bytes()):
        assert SECRET.encode() not in blob


def test_anthropic_agent_nudges_then_fails_without_an_edit(ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    script = [message([text("I think the trainer is fine.")], "end_turn"),
              message([text("Still nothing to change.")], "end_turn")]
    with FakeAnthropic(script) as srv:
        ctx = ctx_for(ws)
        proc = run_agent(make_agent("anthropic", {}), ctx, {"ANTHROPIC_BASE_URL": srv.url})
    assert proc.returncode == 1
    assert len(srv.requests) == 2
    assert "submit" in srv.requests[1]["body"]["messages"][-1]["content"]
    assert b"no change was made to train.py" in proc.stderr
    assert (ws.root / "train.py").read_text() == TRAIN_PY


def test_anthropic_agent_reports_a_rejected_key_without_printing_it(ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    err = (401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    with FakeAnthropic([err]) as srv:
        proc = run_agent(make_agent("anthropic", {}), ctx_for(ws), {"ANTHROPIC_BASE_URL": srv.url})
    assert proc.returncode == 1
    assert b"rejected ANTHROPIC_API_KEY" in proc.stderr
    assert SECRET.encode() not in proc.stdout + proc.stderr


def test_missing_api_key_is_a_user_error(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        make_agent("anthropic", {})


def test_cost_table():
    assert estimate_cost("claude-sonnet-4-6", 1_000_000, 0) == 3.0
    assert estimate_cost("claude-opus-4-1-20250805", 0, 1_000_000) == 75.0
    assert estimate_cost("claude-opus-4-7", 0, 1_000_000) == 25.0
    assert estimate_cost("claude-haiku-4-5", 1_000_000, 1_000_000) == 6.0
    assert estimate_cost("some-other-model", 10, 10) is None


# --- command, mutate, auto ------------------------------------------------------------------------

def test_command_agent_runs_through_the_shell(ws):
    cmd = ("sed -i 's/DEPTH = 8 /DEPTH = 6 /' train.py && echo \"shallower ($AUTORESEARCH_EXPERIMENT)\" "
           "> \"$AUTORESEARCH_PROPOSAL_FILE\" && echo done")
    agent = make_agent("command", {"agent_cmd": cmd})
    ctx = ctx_for(ws)
    assert agent.command(ctx) == ["/bin/sh", "-c", cmd]
    proc = run_agent(agent, ctx)
    assert proc.returncode == 0 and proc.stdout == b"done\n"
    assert "DEPTH = 6 " in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text() == "shallower (0001)\n"


@pytest.mark.parametrize("cmd", [None, "", "   "])
def test_command_agent_needs_a_command(cmd):
    with pytest.raises(UserError, match="--agent-cmd"):
        make_agent("command", {"agent_cmd": cmd})


def test_mutate_agent_as_a_subprocess(ws):
    agent = make_agent("mutate", {"seed": 7})
    ctx = ctx_for(ws)
    proc = run_agent(agent, ctx)
    assert proc.returncode == 0, proc.stderr.decode()
    desc = ctx.proposal_file.read_text().strip()
    name = desc.split()[0]
    assert name in ("DEPTH", "MATRIX_LR", "EMBEDDING_LR") and " -> " in desc
    assert proc.stdout.decode().strip() == desc
    assert (ws.root / "train.py").read_text() != TRAIN_PY


def test_unknown_agent_is_a_user_error():
    with pytest.raises(UserError, match="unknown agent 'gpt'; choose one of auto, claude"):
        make_agent("gpt", {})
    assert set(AGENTS) == {"auto", "claude", "codex", "anthropic", "command", "mutate"}


def test_auto_prefers_claude_then_anthropic_then_mutate(bin_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    name, notice = resolve_auto({})
    assert name == "mutate" and "offline mutate agent" in notice
    agent = make_agent("auto", {})
    assert agent.name == "mutate" and agent.notice == notice

    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    assert resolve_auto({}) == ("anthropic", None)
    assert make_agent(None, {}).describe() == "anthropic (claude-sonnet-4-6)"

    write_fake(bin_dir, "claude", "print('hi')\n")
    assert resolve_auto({}) == ("claude", None)
    assert make_agent("auto", {}).name == "claude"


def test_cli_that_cannot_start_is_one_sentence(ws, bin_dir):
    fake = write_fake(bin_dir, "claude", "print('never runs')\n")
    agent = make_agent("claude", {})
    fake.write_text("#!/nonexistent/interpreter\n")
    proc = run_agent(agent, ctx_for(ws))
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("claude agent: cannot start ") and b"Traceback" not in proc.stderr


def test_anthropic_tools_report_a_missing_train_py_to_the_model(tmp_path):
    # the error goes back to the model as a tool result, the agent does not die with a traceback
    from core.agents.anthropic_agent import ToolError, Tools
    tools = Tools(tmp_path)
    with pytest.raises(ToolError, match="train.py does not exist"):
        tools.edit_train_py("a", "b")
    (tmp_path / "train.py").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ToolError, match="cannot read train.py"):
        tools.edit_train_py("a", "b")
