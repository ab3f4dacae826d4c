"""Agents through their real subprocess paths, fast: scripted stand-ins for the claude/codex CLIs (corner cases the real
CLIs cannot be made to produce, and a fast path without them), a loopback Messages API for the anthropic agent.

The real CLIs are exercised in test_agents_real_cli.py (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from model_servers import AnthropicServer, Call, Turn, anthropic_error, anthropic_tool_results, result_text

from core.agents import AGENTS, make_agent, resolve_auto
from core.agents.base import AgentContext, agent_env
from core.agents.cli import AgentError, check_version, one_sentence
from core.agents.pricing import estimate_cost, price_for
from core.description import from_text as description_from_text
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
    exp.mkdir(parents=True, exist_ok=True)
    for name in ("proposal.txt", "usage.json"):
        (exp / name).unlink(missing_ok=True)
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
    if sys.argv[1:] == ["--version"]:
        print(os.environ.get("FAKE_VERSION", "2.1.328") + " (Claude Code)")
        sys.exit(0)
    prompt = sys.stdin.read()
    home = pathlib.Path(os.environ["CLAUDE_CONFIG_DIR"])
    (home / "projects").mkdir()  # what a CLI leaves in its config folder
    pathlib.Path(os.environ["FAKE_ARGV_FILE"]).write_text(json.dumps(
        {"argv": sys.argv[1:], "prompt": prompt, "home": str(home),
         "env": {k: v for k, v in os.environ.items() if k.startswith(("CLAUDE", "DISABLE", "TMPDIR"))}}))
    def emit(obj):
        print(json.dumps(obj), flush=True)
    emit({"type": "system", "subtype": "init", "model": "claude-sonnet-4-6", "tools": ["Read", "Edit"],
          "memory_paths": None})
    p = pathlib.Path("train.py")
    p.write_text(p.read_text().replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05"))
    emit({"type": "assistant", "message": {"content": [{"type": "text", "text": "Done."}]}})
    emit(json.loads(os.environ.get("FAKE_RESULT") or json.dumps(
         {"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
          "result": "I raised the Muon learning rate.\\nDESCRIPTION: MATRIX_LR 0.04 -> 0.05 (faster start)",
          "total_cost_usd": 0.0421, "modelUsage": {"claude-sonnet-4-6": {"outputTokens": 250}},
          "usage": {"input_tokens": 1200, "cache_read_input_tokens": 300, "output_tokens": 250}})))
    sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


def test_claude_agent_runs_the_cli_confined(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "claude", FAKE_CLAUDE)
    agent = make_agent("claude", {"model": "claude-sonnet-4-6"})
    ctx = ctx_for(ws, "# prompt\nmake it better")
    argv_file = tmp_path / "argv.json"
    proc = run_agent(agent, ctx, {"FAKE_ARGV_FILE": str(argv_file)})
    assert proc.returncode == 0, proc.stderr.decode()

    seen = json.loads(argv_file.read_text())
    argv = seen["argv"]
    assert "--dangerously-skip-permissions" not in argv and "-p" in argv
    assert argv[argv.index("--permission-mode") + 1] == "dontAsk"
    assert argv[argv.index("--tools") + 1] == "Read,Edit,Write,Glob,Grep"
    assert argv[argv.index("--allowedTools") + 1] == "Edit(./train.py)"
    assert argv[argv.index("--setting-sources") + 1] == ""
    assert {"--no-session-persistence", "--strict-mcp-config", "--disable-slash-commands", "--verbose"} <= set(argv)
    assert argv[argv.index("--output-format") + 1] == "stream-json"
    assert argv[argv.index("--model") + 1] == "claude-sonnet-4-6"
    # the prompt goes to stdin as the engine worded it: the CLI needs nothing outside its cwd
    assert seen["prompt"].startswith("# prompt\nmake it better")
    assert seen["env"]["CLAUDE_CODE_DISABLE_AUTO_MEMORY"] == "1"
    home = Path(seen["home"])
    assert home.parent == ctx.proposal_file.parent and not home.exists()  # private, and removed afterwards
    assert seen["env"]["TMPDIR"] == str(home / "tmp")

    assert "MATRIX_LR = 0.05        # Muon lr" in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text().strip() == "MATRIX_LR 0.04 -> 0.05 (faster start)"
    usage = json.loads(ctx.usage_file.read_text())
    assert usage == {"model": "claude-sonnet-4-6", "input_tokens": 1500, "output_tokens": 250, "cost_usd": 0.0421,
                     "cost_estimated": False, "turns": 3, "error": None, "error_kind": None,
                     "extra": {"tools": ["Read", "Edit"], "memory_paths": None, "cache_read_tokens": 300,
                               "cache_write_tokens": 0, "permission_denials": 0}}
    log = ctx.log_file.read_text()
    assert '"type": "result"' in log and '"type": "system"' in log  # the stream lands in agent.log


def claude_error_run(ws, bin_dir, tmp_path, result: dict, rc: int = 1):
    write_fake(bin_dir, "claude", FAKE_CLAUDE)
    ctx = ctx_for(ws)
    proc = run_agent(make_agent("claude", {}), ctx, {"FAKE_ARGV_FILE": str(tmp_path / "argv.json"),
                                                     "FAKE_RESULT": json.dumps(result), "FAKE_RC": str(rc)})
    assert proc.returncode == 1
    assert not ctx.proposal_file.exists()  # an error is never the description
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and err.startswith("claude agent: ") and "Traceback" not in err
    return json.loads(ctx.usage_file.read_text()), err


def test_claude_error_results_are_one_sentence_of_a_kind(ws, bin_dir, tmp_path):
    base = {"type": "result", "subtype": "success", "is_error": True, "num_turns": 1, "total_cost_usd": 0,
            "usage": {"input_tokens": 0, "output_tokens": 0}}
    cases = [
        ({"result": "Invalid API key · Fix external API key", "api_error_status": 401,
          "api_error_type": "authentication_error"}, "auth", "Invalid API key"),
        ({"result": "Not logged in · Please run /login", "api_error_status": None}, "auth", "not logged in"),
        ({"result": "API Error: Request rejected (429) · slow down", "api_error_status": 429,
          "api_error_type": "rate_limit_error"}, "rate_limit", "slow down"),
        ({"result": "API Error: Connection refused (ECONNREFUSED)", "api_error": "connection_failed"}, "network",
         "ECONNREFUSED"),
        ({"subtype": "error_max_turns", "result": None, "num_turns": 40}, "other", "error_max_turns"),
        ({"subtype": "error_during_execution", "result": None, "errors": ["boom"]}, "other", "boom"),
    ]
    for fields, kind, needle in cases:
        usage, err = claude_error_run(ws, bin_dir, tmp_path, {**base, **fields})
        assert usage["error_kind"] == kind and needle in usage["error"], (fields, usage)
        assert err == f"claude agent: {usage['error']}"


def test_claude_cli_that_exits_without_a_result(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "claude", FAKE_CLAUDE.replace("    emit(json.loads(", "    sys.exit(3)\n    emit(json.loads("))
    ctx = ctx_for(ws)
    proc = run_agent(make_agent("claude", {}), ctx, {"FAKE_ARGV_FILE": str(tmp_path / "argv.json")})
    assert proc.returncode == 1
    assert json.loads(ctx.usage_file.read_text())["error"] == "Claude Code exited with code 3 without a result (see agent.log)."


@pytest.mark.parametrize("version, kind", [("1.0.3", "too old"), ("2.2.0", "newer than"), ("3.0.1", "newer than")])
def test_claude_version_outside_the_checked_range(ws, bin_dir, tmp_path, version, kind):
    write_fake(bin_dir, "claude", FAKE_CLAUDE)
    ctx = ctx_for(ws)
    proc = run_agent(make_agent("claude", {}), ctx, {"FAKE_VERSION": version, "FAKE_ARGV_FILE": str(tmp_path / "a")})
    assert proc.returncode == 1 and not (tmp_path / "a").exists()  # refused before the CLI runs
    usage = json.loads(ctx.usage_file.read_text())
    assert usage["error_kind"] == "version" and kind in usage["error"] and version in usage["error"]
    assert "npm install -g @anthropic-ai/claude-code@2.1.328" in usage["error"]
    if kind == "newer than":
        proc = run_agent(make_agent("claude", {}), ctx, {"FAKE_VERSION": version, "FAKE_ARGV_FILE": str(tmp_path / "a"),
                                                         "AUTORESEARCH_ALLOW_ANY_CLI_VERSION": "1"})
        assert proc.returncode == 0, proc.stderr


def test_missing_claude_cli_is_a_user_error(bin_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(bin_dir))  # nothing else on PATH
    with pytest.raises(UserError, match="the claude CLI is not on PATH; install Claude Code"):
        make_agent("claude", {})


FAKE_CODEX = """\
    import json, os, sys, pathlib
    if sys.argv[1:] == ["--version"]:
        print("codex-cli " + os.environ.get("FAKE_VERSION", "0.169.0"))
        sys.exit(0)
    if sys.argv[1:3] == ["debug", "models"]:
        print(json.dumps({"models": [{"slug": "gpt-hidden", "priority": 0, "visibility": "hide"},
                                     {"slug": "gpt-5-codex", "priority": 1, "visibility": "list"},
                                     {"slug": "gpt-5-mini", "priority": 2, "visibility": "list"}]}))
        sys.exit(0)
    if os.environ.get("FAKE_STDERR"):
        print(os.environ["FAKE_STDERR"], file=sys.stderr)
        sys.exit(2)
    prompt = sys.stdin.read()
    pathlib.Path(os.environ["FAKE_ARGV_FILE"]).write_text(json.dumps(
        {"argv": sys.argv[1:], "prompt": prompt, "home": os.environ["CODEX_HOME"]}))
    def emit(obj):
        print(json.dumps(obj), flush=True)
    emit({"type": "thread.started", "thread_id": "th_1"})
    emit({"type": "turn.started"})
    # a dropped stream that codex recovers from: not fatal
    emit({"type": "error", "message": "Reconnecting... 1/5 (stream disconnected before completion)"})
    emit({"type": "item.completed", "item": {"id": "i0", "type": "error", "message": "a warning"}})
    p = pathlib.Path("train.py")
    p.write_text(p.read_text().replace("DEPTH = 8 ", "DEPTH = 9 "))
    emit({"type": "item.completed", "item": {"id": "i1", "type": "file_change", "changes": []}})
    emit({"type": "item.completed", "item": {"id": "i2", "type": "agent_message",
          "text": "Deeper model.\\nDEPTH 8 -> 9"}})
    for line in json.loads(os.environ.get("FAKE_TAIL") or "[]"):
        emit(line)
    if not os.environ.get("FAKE_TAIL"):
        emit({"type": "turn.completed", "usage": {"input_tokens": 900, "cached_input_tokens": 100,
              "output_tokens": 80}})
    sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""
CODEX_KEY = {"OPENAI_API_KEY": "sk-test-codex-0123"}


def test_codex_agent_runs_exec_in_its_sandbox(ws, bin_dir, tmp_path):
    write_fake(bin_dir, "codex", FAKE_CODEX)
    agent = make_agent("codex", {})
    ctx = ctx_for(ws, "codex prompt")
    argv_file = tmp_path / "argv.json"
    proc = run_agent(agent, ctx, {"FAKE_ARGV_FILE": str(argv_file), **CODEX_KEY})
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(argv_file.read_text())
    argv = seen["argv"]
    assert argv[:2] == ["exec", "--json"] and argv[-1] == "-"
    assert "--full-auto" not in argv and "--dangerously-bypass-approvals-and-sandbox" not in argv
    assert {"--ephemeral", "--skip-git-repo-check", "--ignore-rules"} <= set(argv)
    configs = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert 'approval_policy="never"' in configs and 'default_permissions="autoresearch"' in configs
    assert "permissions.autoresearch.network.enabled=false" in configs
    fs = next(c for c in configs if c.startswith("permissions.autoresearch.filesystem="))
    assert '"/etc"="none"' in fs and '":project_roots"={"."="write", ".autoresearch"="none"}' in fs
    disabled = {argv[i + 1] for i, a in enumerate(argv) if a == "--disable"}
    assert {"multi_agent", "memories", "unbounded_connection_retries"} <= disabled
    assert argv[argv.index("--model") + 1] == "gpt-5-codex"  # the catalog's first listed model, recorded exactly
    assert seen["prompt"].startswith("codex prompt")
    assert not Path(seen["home"]).exists()
    assert "DEPTH = 9 " in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text().strip() == "DEPTH 8 -> 9"
    usage = json.loads(ctx.usage_file.read_text())
    assert usage["model"] == "gpt-5-codex" and usage["input_tokens"] == 900 and usage["output_tokens"] == 80
    assert usage["cost_estimated"] is True and usage["error"] is None
    assert usage["cost_usd"] == pytest.approx((800 * 1.25 + 100 * 0.125 + 80 * 10.0) / 1e6, abs=1e-6)


def codex_error_run(ws, bin_dir, tmp_path, env: dict):
    write_fake(bin_dir, "codex", FAKE_CODEX)
    ctx = ctx_for(ws)
    proc = run_agent(make_agent("codex", {"model": "gpt-5-mini"}), ctx,
                     {"FAKE_ARGV_FILE": str(tmp_path / "argv.json"), **CODEX_KEY, **env})
    assert proc.returncode == 1
    assert not ctx.proposal_file.exists()
    err = proc.stderr.decode().strip().splitlines()[-1]
    assert err.startswith("codex agent: ") and b"Traceback" not in proc.stderr
    return json.loads(ctx.usage_file.read_text())


def test_codex_only_a_failed_turn_is_fatal(ws, bin_dir, tmp_path):
    tail = [{"type": "error", "message": "unexpected status 500: overloaded"},
            {"type": "turn.failed", "error": {"message": "unexpected status 500: overloaded"}}]
    usage = codex_error_run(ws, bin_dir, tmp_path, {"FAKE_TAIL": json.dumps(tail), "FAKE_RC": "1"})
    assert usage["error_kind"] == "other" and "overloaded" in usage["error"] and usage["model"] == "gpt-5-mini"


def test_codex_argv_rejected_is_a_version_error(ws, bin_dir, tmp_path):
    usage = codex_error_run(ws, bin_dir, tmp_path, {
        "FAKE_STDERR": "error: unexpected argument '--ephemeral' found\n\nFor more information, try '--help'."})
    assert usage["error_kind"] == "version" and "--ephemeral" in usage["error"]
    assert "npm install -g @openai/codex@0.169.0" in usage["error"]


def test_codex_version_too_old(ws, bin_dir, tmp_path):
    usage = codex_error_run(ws, bin_dir, tmp_path, {"FAKE_VERSION": "0.146.0"})
    assert usage["error_kind"] == "version" and "Codex 0.146.0 is too old" in usage["error"]


def test_codex_without_credentials_fails_before_starting(ws, bin_dir, tmp_path):
    usage = codex_error_run(ws, bin_dir, tmp_path, {"OPENAI_API_KEY": ""})
    assert usage["error_kind"] == "auth" and "OPENAI_API_KEY" in usage["error"]
    assert not (tmp_path / "argv.json").exists()


def test_missing_codex_cli_is_a_user_error(bin_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(UserError, match="the codex CLI is not on PATH"):
        make_agent("codex", {})


def test_description_and_sentences():
    assert description_from_text("text\n**DESCRIPTION:** lr up\n") == "lr up"
    assert description_from_text("first\nlast line") == "last line"
    assert description_from_text("") is None
    assert one_sentence("a\x1b[31m  b\n c") == "a[31m b c."
    assert one_sentence("x" * 400).endswith("...") and len(one_sentence("x" * 400)) == 300
    with pytest.raises(AgentError, match="too old") as e:
        check_version("X", (1, 0, 0), (2, 0, 0), (3, 0, 0), "npm i x")
    assert e.value.kind == "version"
    check_version("X", (2, 5, 1), (2, 0, 0), (3, 0, 0), "npm i x")


# --- anthropic ----------------------------------------------------------------------------------

def test_anthropic_agent_tool_loop_against_loopback_api(ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    script = [
        Turn(calls=[Call("read_file", {"path": "prepare.py"}, id="toolu_0001")], text="Let me look at the trainer.",
             input_tokens=2000, output_tokens=50),
        Turn(calls=[Call("read_file", {"path": "../outside.txt"})], input_tokens=1000, output_tokens=100),
        Turn(calls=[Call("edit_train_py", {"old_str": "EMBEDDING_LR = 0.6", "new_str": "EMBEDDING_LR = 0.8"})],
             input_tokens=1000, output_tokens=100),
        Turn(calls=[Call("submit", {"description": "EMBEDDING_LR 0.6 -> 0.8: embeddings learn faster"})],
             input_tokens=3000, output_tokens=40),
    ]
    (ws.root.parent / "outside.txt").write_text("private")
    with AnthropicServer(script) as srv:
        agent = make_agent("anthropic", {"model": "claude-sonnet-4-6"})
        ctx = ctx_for(ws, "PROMPT-MARKER")
        proc = run_agent(agent, ctx, {"ANTHROPIC_BASE_URL": srv.url})
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(srv.requests) == 4
    first = srv.requests[0]["body"]
    assert first["model"] == "claude-sonnet-4-6" and not first.get("stream")
    assert srv.tool_names(0) == ["read_file", "edit_train_py", "write_train_py", "submit"]
    assert "PROMPT-MARKER" in first["messages"][0]["content"]
    assert "MATRIX_LR = 0.04" in first["messages"][0]["content"]  # train.py comes with the first message
    # tool results went back with the right ids; the outside read was refused, prepare.py was read
    results = anthropic_tool_results(srv.requests[1]["body"])
    assert results[0]["tool_use_id"] == "toolu_0001" and result_text(results[0]) == "# read-only\n"
    refused = anthropic_tool_results(srv.requests[2]["body"])[0]
    assert refused["is_error"] is True and "outside the workspace" in result_text(refused)
    assert "private" not in json.dumps(srv.requests[2]["body"])

    assert "EMBEDDING_LR = 0.8      # AdamW" in (ws.root / "train.py").read_text()
    assert ctx.proposal_file.read_text().strip() == "EMBEDDING_LR 0.6 -> 0.8: embeddings learn faster"
    usage = json.loads(ctx.usage_file.read_text())
    assert usage["input_tokens"] == 2000 + 1000 + 1000 + 3000
    assert usage["output_tokens"] == 50 + 100 + 100 + 40
    assert usage["cost_usd"] == pytest.approx((7000 * 3 + 290 * 15) / 1e6) and usage["cost_estimated"] is True
    assert usage["turns"] == 4 and usage["error"] is None and usage["model"] == "claude-sonnet-4-6"
    for blob in (proc.stdout, proc.stderr, ctx.usage_file.read_bytes(), ctx.proposal_file.read_bytes()):
        assert SECRET.encode() not in blob


def test_anthropic_agent_nudges_then_fails_without_an_edit(ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    script = [Turn(text="I think the trainer is fine."), Turn(text="Still nothing to change.")]
    with AnthropicServer(script) as srv:
        ctx = ctx_for(ws)
        proc = run_agent(make_agent("anthropic", {}), ctx, {"ANTHROPIC_BASE_URL": srv.url})
    assert proc.returncode == 1
    assert len(srv.requests) == 2
    assert "submit" in srv.requests[1]["body"]["messages"][-1]["content"]
    assert b"no change was made to train.py" in proc.stderr
    assert (ws.root / "train.py").read_text() == TRAIN_PY
    assert json.loads(ctx.usage_file.read_text())["error_kind"] == "other"


@pytest.mark.parametrize("status, kind, needle", [(401, "auth", "rejected ANTHROPIC_API_KEY"),
                                                  (429, "rate_limit", "rate limiting")])
def test_anthropic_agent_errors_without_printing_the_key(ws, monkeypatch, status, kind, needle):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    ctx = ctx_for(ws)
    with AnthropicServer([anthropic_error(status, f"refused {SECRET}")] * 5) as srv:
        proc = run_agent(make_agent("anthropic", {}), ctx, {"ANTHROPIC_BASE_URL": srv.url})
    assert proc.returncode == 1
    assert needle.encode() in proc.stderr
    usage = json.loads(ctx.usage_file.read_text())
    assert usage["error_kind"] == kind and not ctx.proposal_file.exists()
    assert SECRET.encode() not in proc.stdout + proc.stderr + ctx.usage_file.read_bytes()


def test_anthropic_agent_without_a_server(ws, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with AnthropicServer([]) as srv:
        url = srv.url
    ctx = ctx_for(ws)
    proc = run_agent(make_agent("anthropic", {}), ctx, {"ANTHROPIC_BASE_URL": url})
    assert proc.returncode == 1
    assert json.loads(ctx.usage_file.read_text())["error_kind"] == "network"


def test_missing_api_key_is_a_user_error(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        make_agent("anthropic", {})


def test_cost_table(monkeypatch):
    assert estimate_cost("claude-sonnet-4-6", 1_000_000, 0) == 3.0
    assert estimate_cost("claude-sonnet-4-6", 0, 0, cache_write=1_000_000, cache_read=1_000_000) == 3.75 + 0.3
    assert estimate_cost("gpt-5-codex", 1_000_000, 1_000_000, cache_read=1_000_000) == 1.25 + 10.0 + 0.125
    assert price_for("gpt-5-mini").output == 2.0 and price_for("gpt-5-2025-08-07").input == 1.25
    assert price_for("gpt-5.6-sol") is None and price_for(None) is None  # an unknown model gets no guess
    monkeypatch.setenv("AUTORESEARCH_PRICES", '{"gpt-5.6-sol": [2, 8], "gpt-5": [9, 9, 1], "bad": "x"}')
    assert estimate_cost("gpt-5.6-sol-2026", 1_000_000, 1_000_000) == 10.0
    assert estimate_cost("gpt-5-codex", 0, 0, cache_read=1_000_000) == 1.0 and price_for("bad") is None
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
    err = proc.stderr.decode()
    assert err.startswith("claude agent: cannot run ") and len(err.splitlines()) == 1 and "Traceback" not in err


def test_anthropic_tools_report_a_missing_train_py_to_the_model(tmp_path):
    # the error goes back to the model as a tool result, the agent does not die with a traceback
    from core.agents.anthropic_agent import ToolError, Tools
    tools = Tools(tmp_path)
    with pytest.raises(ToolError, match="train.py does not exist"):
        tools.edit_train_py("a", "b")
    (tmp_path / "train.py").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ToolError, match="cannot read train.py"):
        tools.edit_train_py("a", "b")
