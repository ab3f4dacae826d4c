"""The real Claude Code and Codex CLIs (npm) against the loopback model servers: confinement, errors, usage, end to end.

The CLIs come from .ci/run, which installs the pinned versions into a cache folder and exports
AUTORESEARCH_TEST_CLI_BIN (its node_modules/.bin); without them these tests skip and say why.
Each test scripts the model: the CLI executes the tool calls for real, in a real git workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_fixtures import cli_env, git, make_workspace, meta, tsv_rows
from model_servers import (
    AnthropicServer,
    Call,
    Cut,
    OpenAIServer,
    Turn,
    anthropic_error,
    anthropic_tool_results,
    openai_error,
    openai_tool_outputs,
    result_text,
)

from core.agents import claude as claude_mod
from core.agents import codex as codex_mod
from core.agents.base import AgentContext, agent_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = Path(os.environ.get("AUTORESEARCH_NPM_CACHE") or Path.home() / ".cache" / "autoresearch-ci" / "npm") \
    / "node_modules" / ".bin"
QUALITY_OLD = "QUALITY = 1.0  # the val_bpb this run reports"
QUALITY_NEW = "QUALITY = 0.9  # the val_bpb this run reports"
DESCRIPTION = "QUALITY 1.0 -> 0.9: the fake trainer reports a lower val_bpb"
KEY = "sk-loopback-0123456789"


def cli_bin_dir(name: str) -> Path:
    d = Path(os.environ.get("AUTORESEARCH_TEST_CLI_BIN") or DEFAULT_BIN)
    if not (d / name).exists():
        why = "npm is not installed" if not shutil.which("npm") else f"{d / name} is missing"
        pytest.skip(f"the real {name} CLI is not installed ({why}); run .ci/run, which installs the pinned "
                    f"{name} with npm into {DEFAULT_BIN.parent.parent}")
    return d


@pytest.fixture
def claude_bin():
    return cli_bin_dir("claude")


@pytest.fixture
def codex_bin():
    return cli_bin_dir("codex")


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path / "ws")


def worktree(ws) -> Path:
    """The agent's checkout as the engine will make it: a git worktree under .autoresearch/worktrees/NNNN."""
    wt = ws.root / ".autoresearch" / "worktrees" / "0001"
    wt.parent.mkdir(parents=True, exist_ok=True)
    git(ws.root, "worktree", "add", "-q", "--detach", str(wt))
    return wt


def ctx_for(ws, prompt: str = "# prompt\nLower val_bpb.\n") -> AgentContext:
    exp = ws.experiment_dir("0001")
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "prompt.md").write_text(prompt)
    return AgentContext(workspace=ws, exp_id="0001", prompt=prompt, prompt_file=exp / "prompt.md",
                        proposal_file=exp / "proposal.txt", usage_file=exp / "usage.json",
                        log_file=exp / "agent.log", timeout=120)


def engine_prompt(ws) -> str:
    """The prompt the engine writes for a CLI agent: the hand-in is its final message's DESCRIPTION line."""
    from core.ledger import Ledger
    from core.prompt import build_prompt
    return build_prompt(ws, Ledger(), None, None, None, hand_in="final_message")


def run_wrapper(agent, ctx, cwd: Path, bin_dir: Path, env: dict, timeout: float = 120):
    """What the engine does: the agent's argv in its cwd with the AUTORESEARCH_* variables."""
    full = cli_env()
    full["PATH"] = f"{bin_dir}{os.pathsep}{full['PATH']}"
    full.update(agent_env(ctx))
    full.update(env)
    t0 = time.monotonic()
    proc = subprocess.run(agent.command(ctx), cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    proc.wall_s = time.monotonic() - t0
    ctx.log_file.write_text(proc.stdout + proc.stderr)
    return proc


def usage_of(ctx) -> dict:
    return json.loads(ctx.usage_file.read_text())


def leftovers(ctx) -> list[str]:
    """Processes still running whose command line names the experiment folder (the CLI's private home)."""
    import psutil
    marker = str(ctx.proposal_file.parent)
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in a for a in p.info["cmdline"] or ()):
                out.append(" ".join(p.info["cmdline"])[:120])
        except psutil.Error:
            continue
    return out


# --- Claude Code ----------------------------------------------------------------------------------

def claude_env(srv) -> dict:
    return {"ANTHROPIC_BASE_URL": srv.url, "ANTHROPIC_API_KEY": KEY}


def claude_agent(bin_dir, **config):
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old}"
    try:
        return claude_mod.ClaudeAgent(config)
    finally:
        os.environ["PATH"] = old


def claude_edit_script(cwd: Path) -> list:
    train = str(cwd / "train.py")
    return [Turn(calls=[Call("Read", {"file_path": train})], text="Let me read the trainer."),
            Turn(calls=[Call("Edit", {"file_path": train, "old_string": QUALITY_OLD, "new_string": QUALITY_NEW})]),
            Turn(text=f"I lowered QUALITY.\nDESCRIPTION: {DESCRIPTION}")]


def test_claude_edits_train_py_through_the_wrapper(ws, claude_bin):
    ctx = ctx_for(ws, engine_prompt(ws) + "\nPROMPT-MARKER\n")
    with AnthropicServer(claude_edit_script(ws.root)) as srv:
        proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin, claude_env(srv))
    assert proc.returncode == 0, proc.stderr
    assert QUALITY_NEW in ws.train_py.read_text()
    assert ctx.proposal_file.read_text().strip() == DESCRIPTION
    usage = usage_of(ctx)
    assert usage["error"] is None and usage["error_kind"] is None
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["cost_usd"] > 0 and usage["cost_estimated"] is False and usage["turns"] >= 3
    assert usage["model"]
    # what the CLI offers the model, and the prompt it got on stdin
    tools = srv.tool_names(0)
    assert {"Read", "Edit", "Write", "Glob", "Grep"} <= set(tools)
    assert not {"Bash", "EnterWorktree", "WebFetch", "WebSearch", "Task", "Agent", "CronCreate"} & set(tools)
    assert usage["extra"]["tools"] == ["Edit", "Glob", "Grep", "Read", "Write"]
    first = json.dumps(srv.agent_requests[0]["body"]["messages"])
    assert "PROMPT-MARKER" in first and "DESCRIPTION:" in first
    print(f"\nclaude: tools offered {tools}; first request {srv.first_request_size()} bytes; "
          f"wrapper {proc.wall_s:.1f} s")


def denial_results(srv) -> list[dict]:
    out = []
    for req in srv.agent_requests[1:]:
        out += anthropic_tool_results(req["body"])
    return out


@pytest.mark.parametrize("case", ["write_tmp", "read_etc", "edit_prepare", "new_file", "worktree", "bash_worktree",
                                  "write_outside"])
def test_claude_denials(ws, claude_bin, case, tmp_path):
    cwd = worktree(ws)
    target = {"write_tmp": Path("/tmp") / f"autoresearch-denial-{os.getpid()}-{tmp_path.name}"}.get(case)
    calls = {
        "write_tmp": [Call("Write", {"file_path": str(target), "content": "x"})],
        "read_etc": [Call("Read", {"file_path": "/etc/hostname"})],
        "edit_prepare": [Call("Read", {"file_path": str(cwd / "prepare.py")}),
                         Call("Edit", {"file_path": str(cwd / "prepare.py"), "old_string": "import json",
                                       "new_string": "import json  # changed"})],
        "new_file": [Call("Write", {"file_path": str(cwd / "notes.md"), "content": "x"})],
        "worktree": [Call("EnterWorktree", {"name": "escape"})],
        "bash_worktree": [Call("Bash", {"command": "git worktree add ../escape && git branch escape"})],
        "write_outside": [Call("Write", {"file_path": str(ws.root.parent / "memory.md"), "content": "remember me"})],
    }[case]
    script = [Turn(calls=calls), Turn(text="DESCRIPTION: tried")]
    ctx = ctx_for(ws)
    with AnthropicServer(script) as srv:
        proc = run_wrapper(claude_agent(claude_bin), ctx, cwd, claude_bin, claude_env(srv))
    assert proc.returncode == 0, proc.stderr
    results = denial_results(srv)
    refused = results[-1]
    assert refused["is_error"] is True, results
    text = result_text(refused)
    assert ("denied" in text and "don't ask mode" in text) or "No such tool available" in text, text
    if case == "read_etc":
        assert Path("/etc/hostname").read_text().strip() not in json.dumps(srv.agent_requests[-1]["body"])
    if case == "edit_prepare":
        assert results[0].get("is_error") is not True  # reading inside the cwd is allowed
    assert git(cwd, "status", "--porcelain") == ""  # nothing changed in the checkout
    assert target is None or not target.exists()
    assert not (ws.root.parent / "memory.md").exists()
    assert git(ws.root, "worktree", "list").count("\n") == 1 and "escape" not in git(ws.root, "branch", "-a")
    print(f"\nclaude denial {case}: {text[:90]!r}")


def test_claude_keeps_no_memory_between_runs(ws, claude_bin):
    """Two runs: the second sees no trace of the first (no session, no memory folder, no settings)."""
    bodies = []
    for marker in ("FIRST-RUN", "SECOND-RUN"):
        ctx = ctx_for(ws, f"# prompt\n{marker}\n")
        with AnthropicServer([Turn(text="DESCRIPTION: nothing")]) as srv:
            proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin, claude_env(srv))
        assert proc.returncode == 0, proc.stderr
        bodies.append(json.dumps(srv.agent_requests[0]["body"]))
        usage = usage_of(ctx)
        assert usage["extra"]["memory_paths"] is None  # auto memory is off: the CLI has no memory folder
    assert "FIRST-RUN" not in bodies[1]
    leftovers = [p.name for p in ws.experiment_dir("0001").iterdir()]
    assert not [n for n in leftovers if n.startswith("claude-home-")], leftovers  # the private home is removed


def test_claude_bad_key_stops_at_once(ws, claude_bin):
    err = anthropic_error(401, "invalid x-api-key")
    ctx = ctx_for(ws)
    with AnthropicServer([err] * 20) as srv:
        proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin, claude_env(srv))
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "auth" and "ANTHROPIC_API_KEY" in usage["error"]
    assert proc.stderr.strip().splitlines()[-1].startswith("claude agent: the API rejected the credentials")
    assert len(srv.agent_requests) <= 2 and proc.wall_s < 30  # not minutes of retries
    assert not ctx.proposal_file.exists()  # an error is never a description
    print(f"\nclaude bad key: {usage['error']!r} after {proc.wall_s:.1f} s, {len(srv.agent_requests)} requests")


def test_claude_not_logged_in(ws, claude_bin):
    ctx = ctx_for(ws)
    with AnthropicServer([]) as srv:
        env = claude_env(srv)
        env["ANTHROPIC_API_KEY"] = ""
        proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin, env)
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "auth" and "not logged in" in usage["error"].lower()
    assert "CLAUDE_CODE_OAUTH_TOKEN" in usage["error"] and not ctx.proposal_file.exists()


def test_claude_rate_limited(ws, claude_bin):
    err = anthropic_error(429, "Number of request tokens has exceeded your per-minute rate limit")
    ctx = ctx_for(ws)
    with AnthropicServer([err] * 5) as srv:
        proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin,
                           {**claude_env(srv), "CLAUDE_CODE_MAX_RETRIES": "1"})
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "rate_limit" and "per-minute rate limit" in usage["error"]


def test_claude_no_network(ws, claude_bin):
    ctx = ctx_for(ws)
    with AnthropicServer([]) as srv:
        url = srv.url
    proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin,
                       {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_MAX_RETRIES": "1"})
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "network" and "ECONNREFUSED" in usage["error"]


def test_claude_recovers_from_a_dropped_stream(ws, claude_bin):
    ctx = ctx_for(ws)
    with AnthropicServer([Cut(), *claude_edit_script(ws.root)]) as srv:
        proc = run_wrapper(claude_agent(claude_bin), ctx, ws.root, claude_bin, claude_env(srv))
    assert proc.returncode == 0, proc.stderr
    assert QUALITY_NEW in ws.train_py.read_text() and ctx.proposal_file.read_text().strip() == DESCRIPTION


# --- Codex ----------------------------------------------------------------------------------------

def codex_env(srv) -> dict:
    return {"OPENAI_BASE_URL": srv.url + "/v1", "OPENAI_API_KEY": KEY}


def codex_agent(bin_dir, **config):
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old}"
    try:
        return codex_mod.CodexAgent(config)
    finally:
        os.environ["PATH"] = old


def js(tool: str, arg) -> Call:
    """Codex's code mode: the model calls the `exec` tool with JavaScript that calls the nested tools."""
    code = f"const r = await tools.{tool}({json.dumps(arg)});\ntext(typeof r === 'string' ? r : JSON.stringify(r));"
    return Call("exec", {"input": code}, custom=True)


PATCH = f"*** Begin Patch\n*** Update File: train.py\n@@\n-{QUALITY_OLD}\n+{QUALITY_NEW}\n*** End Patch\n"


def codex_edit_script() -> list:
    return [Turn(calls=[js("exec_command", {"cmd": "cat train.py"})]),
            Turn(calls=[js("apply_patch", PATCH)]),
            Turn(text=f"I lowered QUALITY.\nDESCRIPTION: {DESCRIPTION}")]


def codex_outputs(srv) -> list[str]:
    """The text of each tool output codex sent back (code mode wraps a command's result in JSON)."""
    out = []
    for o in openai_tool_outputs(srv.agent_requests[-1]["body"]):
        parts = o.get("output") if isinstance(o.get("output"), list) else [{"text": str(o.get("output"))}]
        text = "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))
        try:
            text = json.loads(text.split("Output:\n", 1)[-1].split("\n", 1)[-1] or "null").get("output", text)
        except (ValueError, AttributeError):
            pass
        out.append(text)
    return out


def test_codex_edits_train_py_through_the_wrapper(ws, codex_bin):
    ctx = ctx_for(ws, engine_prompt(ws) + "\nPROMPT-MARKER\n")
    prices = {"AUTORESEARCH_PRICES": json.dumps({"gpt-6.1-sol": [2.0, 8.0, 0.2]})}
    with OpenAIServer(codex_edit_script()) as srv:
        proc = run_wrapper(codex_agent(codex_bin), ctx, ws.root, codex_bin, {**codex_env(srv), **prices})
    assert proc.returncode == 0, proc.stderr
    assert QUALITY_NEW in ws.train_py.read_text()
    assert ctx.proposal_file.read_text().strip() == DESCRIPTION
    usage = usage_of(ctx)
    assert usage["error"] is None and usage["model"] == srv.agent_requests[0]["body"]["model"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0 and usage["turns"] == 1
    assert usage["cost_estimated"] is True
    assert usage["cost_usd"] == pytest.approx((usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1e6)
    assert "QUALITY = 1.0" in codex_outputs(srv)[0]  # cat train.py ran in the sandbox and its output came back
    first = json.dumps(srv.agent_requests[0]["body"])
    assert "PROMPT-MARKER" in first and "DESCRIPTION:" in first
    tools = srv.tool_names(0)
    assert "functions.exec" in tools and not any("web_search" in t or "goal" in t for t in tools)
    assert leftovers(ctx) == []  # codex's sandbox helpers outlive it; the wrapper ends them
    print(f"\ncodex: model {usage['model']}; tools offered {tools}; first request {srv.first_request_size()} "
          f"bytes; wrapper {proc.wall_s:.1f} s")


def codex_shell_denial(ws, codex_bin, cmd: str, cwd: Path):
    ctx = ctx_for(ws)
    script = [Turn(calls=[js("exec_command", {"cmd": cmd})]), Turn(text="DESCRIPTION: tried")]
    with OpenAIServer(script) as srv:
        proc = run_wrapper(codex_agent(codex_bin), ctx, cwd, codex_bin, codex_env(srv))
    assert proc.returncode == 0, proc.stderr
    return codex_outputs(srv)[0]


@pytest.mark.parametrize("case", ["write_tmp", "read_etc", "read_outside", "worktree", "network", "engine_state"])
def test_codex_denials(ws, codex_bin, case, tmp_path):
    cwd = worktree(ws) if case != "engine_state" else ws.root
    target = Path("/tmp") / f"autoresearch-denial-{os.getpid()}-{tmp_path.name}"
    outside = ws.root.parent / "outside.txt"
    outside.write_text("OUTSIDE-SECRET")
    cmd = {
        "write_tmp": f"echo x > {target}; echo x > $TMPDIR/y; ls -la {target}",
        "read_etc": "cat /etc/hostname",
        "read_outside": f"cat {outside}; ls {ws.root}",
        "worktree": "git worktree add ../escape; git branch escape; git commit -qam x",
        "network": "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 9), 2)\"",
        "engine_state": "mkdir -p .autoresearch/x && echo forged > .autoresearch/experiments/0001/usage.json",
    }[case]
    out = codex_shell_denial(ws, codex_bin, cmd, cwd)
    if case == "write_tmp":
        assert not target.exists()
    elif case == "read_etc":
        assert Path("/etc/hostname").read_text().strip() not in out and "Permission denied" in out
    elif case == "read_outside":
        assert "OUTSIDE-SECRET" not in out and "train.py" not in out
    elif case == "worktree":
        assert "escape" not in git(ws.root, "branch", "-a") and git(ws.root, "worktree", "list").count("\n") == 1
        assert git(cwd, "status", "--porcelain") == ""
    elif case == "network":
        assert "Operation not permitted" in out or "PermissionError" in out
    elif case == "engine_state":
        assert not (ws.root / ".autoresearch" / "x").exists()
    print(f"\ncodex denial {case}: {out.strip()[-160:]!r}")


def test_codex_may_create_files_in_its_cwd_and_the_engine_rejects_them(ws, codex_bin):
    """The sandbox's write granularity is a folder: a new file or a prepare.py edit in the cwd is possible
    (the engine's check_changes rejects it, see test_engine); nothing outside the cwd is."""
    cwd = worktree(ws)
    out = codex_shell_denial(ws, codex_bin, "touch notes.md; echo '# x' >> prepare.py; ls", cwd)
    assert "notes.md" in out
    status = git(cwd, "status", "--porcelain")
    assert "prepare.py" in status and "notes.md" in status


def test_codex_bad_key_stops_at_once(ws, codex_bin):
    err = openai_error(401, f"Incorrect API key provided: {KEY}.", "invalid_api_key")
    ctx = ctx_for(ws)
    with OpenAIServer([err] * 20) as srv:
        proc = run_wrapper(codex_agent(codex_bin), ctx, ws.root, codex_bin, codex_env(srv))
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "auth" and "Incorrect API key provided" in usage["error"]
    assert KEY not in usage["error"] and KEY not in proc.stderr
    assert len(srv.agent_requests) <= 2 and proc.wall_s < 20
    assert not ctx.proposal_file.exists() and leftovers(ctx) == []
    print(f"\ncodex bad key: {usage['error']!r} after {proc.wall_s:.1f} s, {len(srv.agent_requests)} requests")


def test_codex_without_credentials(ws, codex_bin):
    ctx = ctx_for(ws)
    proc = run_wrapper(codex_agent(codex_bin), ctx, ws.root, codex_bin,
                       {"OPENAI_API_KEY": "", "CODEX_API_KEY": "", "CODEX_ACCESS_TOKEN": ""})
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "auth" and "OPENAI_API_KEY" in usage["error"]


def test_codex_rate_limited(ws, codex_bin):
    err = openai_error(429, "Rate limit reached for requests per min.", "rate_limit_exceeded")
    ctx = ctx_for(ws)
    with OpenAIServer([err] * 10) as srv:
        proc = run_wrapper(codex_agent(codex_bin), ctx, ws.root, codex_bin, codex_env(srv))
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "rate_limit" and "429" in usage["error"], usage
    print(f"\ncodex rate limited: {usage['error']!r} after {proc.wall_s:.1f} s, {len(srv.agent_requests)} requests")


def test_codex_no_network(ws, codex_bin):
    with OpenAIServer([]) as srv:
        url = srv.url
    ctx = ctx_for(ws)
    proc = run_wrapper(codex_agent(codex_bin), ctx, ws.root, codex_bin,
                       {"OPENAI_BASE_URL": url + "/v1", "OPENAI_API_KEY": KEY})
    assert proc.returncode == 1
    usage = usage_of(ctx)
    assert usage["error_kind"] == "network", usage


def test_codex_recovered_reconnect_is_not_fatal(ws, codex_bin):
    """A dropped stream makes codex emit `error: Reconnecting... 1/5`; the turn then completes: not a crash."""
    ctx = ctx_for(ws)
    with OpenAIServer([Cut(), *codex_edit_script()]) as srv:
        proc = run_wrapper(codex_agent(codex_bin), ctx, ws.root, codex_bin, codex_env(srv))
    assert proc.returncode == 0, proc.stderr
    assert '"Reconnecting... 1/' in proc.stdout
    assert QUALITY_NEW in ws.train_py.read_text() and ctx.proposal_file.read_text().strip() == DESCRIPTION
    assert usage_of(ctx)["error"] is None


# --- end to end: `autoresearch loop --agent claude|codex` ------------------------------------------

def loop(ws, agent: str, bin_dir: Path, env: dict, timeout: float = 240):
    full = cli_env()
    full["PATH"] = f"{bin_dir}{os.pathsep}{full['PATH']}"
    full.update(env)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--agent", agent, "--max", "2",
                        "--tag", "t"], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)
    r.wall_s = time.monotonic() - t0
    return r


def check_loop(ws, r, agent: str) -> dict:
    assert r.returncode == 0, r.stdout + r.stderr
    rows = tsv_rows(ws)
    assert len(rows) == 2, rows  # the baseline and the agent's experiment
    assert rows[1][3] == "keep" and rows[1][4] == DESCRIPTION
    assert float(rows[1][1]) == pytest.approx(0.9)
    assert QUALITY_NEW in git(ws.root, "show", "HEAD:train.py")  # committed on the branch, then trained
    m = meta(ws, "0002")
    assert m["agent"]["name"] == agent and m["agent"]["input_tokens"] > 0 and m["agent"]["output_tokens"] > 0
    return m


def test_loop_with_claude(ws, claude_bin):
    # the engine runs the agent in its own worktree (.autoresearch/worktrees/0002), so its paths are there
    with AnthropicServer(claude_edit_script(ws.state_dir / "worktrees" / "0002")) as srv:
        r = loop(ws, "claude", claude_bin, claude_env(srv))
    m = check_loop(ws, r, "claude")
    assert m["agent"]["cost_usd"] > 0
    print(f"\nloop --agent claude --max 2: {r.wall_s:.1f} s; agent {m['agent']}")


def test_loop_with_codex(ws, codex_bin):
    prices = {"AUTORESEARCH_PRICES": json.dumps({"gpt-6.1-sol": [2.0, 8.0, 0.2]})}
    with OpenAIServer(codex_edit_script()) as srv:
        r = loop(ws, "codex", codex_bin, {**codex_env(srv), **prices})
    m = check_loop(ws, r, "codex")
    print(f"\nloop --agent codex --max 2: {r.wall_s:.1f} s; agent {m['agent']}")
