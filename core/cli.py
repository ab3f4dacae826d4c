"""autoresearch: command-line entry point of the loop engine.

Usage:
  autoresearch check                                  hardware/CUDA/torch/uv report (JSON)
  autoresearch setup --profile P --dataset D [--seq-len N] [--num-shards N]
  autoresearch run                                    one experiment of the current train.py
  autoresearch loop [--tag T] [--agent A] [--max N] [--gpus 0,1|all] [--slots N] [--lookahead K] [--detach]
  autoresearch status [--json]
  autoresearch pause | resume | abort [--id NNNN] | stop
  autoresearch keep NNNN | revert                     a person's decision overrules the engine's
  autoresearch noise [--runs K]                       measure sigma of val_bpb on this setting
  autoresearch idea "TEXT"
  autoresearch results [--kept-only] [--json]
  autoresearch plot [-o FILE]
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one sentence (exit 1) instead of a usage dump (exit 2)."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UserError(f"{message}; run `{self.prog} --help` for the valid options.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="autoresearch", description="Autonomous ML research loop: an agent edits train.py, "
                "the engine keeps only what lowers val_bpb.")
    p.add_argument("-C", "--workspace", default=".", help="workspace folder (default: current directory)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("check", help="report GPU, driver, CUDA, torch and uv availability as JSON")

    s = sub.add_parser("setup", help="write constants.py and train.py size knobs for a hardware profile, "
                       "then prepare data and tokenizer")
    s.add_argument("--profile", default=None, help="h100 (default), a100-40gb, 24gb, 6gb, mps, cpu")
    s.add_argument("--dataset", default=None, help="climbmix (default), fineweb-edu, tinystories, pystdlib, "
                   "or a folder of .parquet/.txt files")
    s.add_argument("--seq-len", type=int, default=None, help="override MAX_SEQ_LEN")
    s.add_argument("--num-shards", type=int, default=None, help="training shards to download")
    s.add_argument("--time-budget", type=float, default=None, help="override TIME_BUDGET (training seconds)")
    s.add_argument("--no-prepare", action="store_true", help="only write the files, do not prepare data")

    sub.add_parser("run", help="run one experiment of the current train.py and print val_bpb and peak_vram_mb")

    lp = sub.add_parser("loop", help="run the experiment loop")
    lp.add_argument("--tag", default=None, help="branch autoresearch/<tag> (default: today's date, e.g. nov26)")
    lp.add_argument("--agent", default=None,
                    help="auto (default), claude, codex, anthropic, command, mutate")
    lp.add_argument("--agent-cmd", default=None, help="command line for --agent command (run through the shell)")
    lp.add_argument("--model", default=None, help="model name for the anthropic agent")
    lp.add_argument("--max", type=int, default=None, help="stop after N experiments")
    lp.add_argument("--min-delta", type=float, default=None, help="keep only if val_bpb < best - X (default 0)")
    lp.add_argument("--simplify-tolerance", type=float, default=None,
                    help="keep a simplification if val_bpb <= best + X (default 0.0005)")
    lp.add_argument("--timeout", type=float, default=None,
                    help="hard trainer timeout in seconds (default TIME_BUDGET + STARTUP_ALLOWANCE + max(TIME_BUDGET, 60))")
    lp.add_argument("--agent-timeout", type=float, default=None, help="agent timeout in seconds (default 900)")
    lp.add_argument("--gpus", default=None, help="one slot per listed GPU, e.g. 0,1,3 or all (the trainer sees only "
                    "its GPU)")
    lp.add_argument("--slots", type=int, default=None, help="run N trainers side by side (CPU: the cores are shared "
                    "out; Ray: at most N of the cluster's slots)")
    lp.add_argument("--lookahead", type=int, default=None, help="proposals made ahead beyond the number of slots "
                    "(default 1; 0: strictly one after the other)")
    lp.add_argument("--agents", type=int, default=None, help="at most N agent processes at once (LLM cost)")
    lp.add_argument("--executor", default=None, help="where runs execute: local (default) or ray")
    lp.add_argument("--ray-address", default=None, help="the Ray cluster for --executor ray (default: what Ray "
                    "finds, e.g. RAY_ADDRESS)")
    lp.add_argument("--ray-resource", default=None, help="what a Ray run reserves: GPU (default), CPU, or a custom "
                    "resource name")
    lp.add_argument("--ray-cpus", type=int, default=None, help="CPUs a Ray run reserves (its trainer's threads)")
    lp.add_argument("--ray-cache", default=None, help="a data cache path valid on every Ray node (default: each node "
                    "prepares its own)")
    lp.add_argument("--decide", default=None, help="noise (default once sigma is measured: keep only gains beyond "
                    "z*sigma) or plain (upstream's rule: any gain)")
    lp.add_argument("--z", type=float, default=None, help="the keep bar in units of sigma (default 2)")
    lp.add_argument("--noise-runs", type=int, default=None, help="extra runs of the baseline to measure sigma "
                    "(default per profile, 3; 0 turns the noise rule off)")
    lp.add_argument("--confirm", default=None, help="wins (default: every win is re-run once before it is kept) "
                    "or borderline (only wins inside the noise band)")
    lp.add_argument("--early-stop", default=None, choices=("on", "off"), help="stop clear losers against the best "
                    "run's loss curve (default on)")
    lp.add_argument("--max-cost", type=float, default=None, help="pause when the agent has spent this many USD")
    lp.add_argument("--detach", action="store_true", help="run in the background, detached from this terminal")

    st = sub.add_parser("status", help="engine status")
    st.add_argument("--json", action="store_true")

    for name, help_ in (("pause", "start nothing new; running runs finish, then hold"),
                        ("resume", "continue after pause"),
                        ("abort", "kill the running experiments now, record them, then hold (--id: one of them)"),
                        ("stop", "finish the running experiments and exit")):
        c = sub.add_parser(name, help=help_)
        if name == "abort":
            c.add_argument("--id", default=None, help="abort only experiment NNNN; the others go on")

    k = sub.add_parser("keep", help="keep a discarded experiment (trained on the current best first if needed)")
    k.add_argument("id", help="the experiment, e.g. 0007")
    sub.add_parser("revert", help="undo the last keep: the branch goes back to the best before it")
    n = sub.add_parser("noise", help="measure the noise floor (sigma of val_bpb) with more runs of the best")
    n.add_argument("--runs", type=int, default=None, help="how many runs (default per profile, 3)")

    i = sub.add_parser("idea", help="queue an idea for the agent's next proposal")
    i.add_argument("text", nargs="+")

    r = sub.add_parser("results", help="human-readable report of results.tsv")
    r.add_argument("--kept-only", action="store_true")
    r.add_argument("--json", action="store_true")

    pl = sub.add_parser("plot", help="val_bpb over experiments with the running-best frontier")
    pl.add_argument("-o", "--output", default="progress.png")
    return p


def dispatch(args: argparse.Namespace) -> int:
    # Imports are local so that `autoresearch status` stays fast and does not pay for torch.
    from .workspace import Workspace

    ws = Workspace.at(args.workspace)
    cmd = args.command
    if cmd not in (None, "check") and not ws.root.is_dir():
        what = "does not exist" if not ws.root.exists() else "is not a folder"
        raise UserError(f"workspace folder {ws.root} {what}; pass an existing workspace with -C (or cd into one).")
    if cmd == "check":
        from .hardware import cmd_check
        return cmd_check(args)
    if cmd == "setup":
        from .setup import cmd_setup
        return cmd_setup(ws, args)
    if cmd in ("run", "loop", "status", "pause", "resume", "abort", "stop", "idea", "keep", "revert", "noise"):
        from . import commands
        return getattr(commands, f"cmd_{cmd}")(ws, args)
    if cmd == "results":
        from .report import cmd_results
        return cmd_results(ws, args)
    if cmd == "plot":
        from .plot import cmd_plot
        return cmd_plot(ws, args)
    build_parser().print_help()
    return 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return dispatch(args) or 0
    except UserError as e:
        print(f"autoresearch: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("autoresearch: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
