"""Git operations of the loop (through GitPython): branch, commit, experiment refs, moving the branch back to the best."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .workspace import STATE_DIR

BRANCH_PREFIX = "autoresearch/"
EXPERIMENT_REF_PREFIX = "refs/autoresearch/experiments/"
EDITABLE = "train.py"
_IDENTITY = {"GIT_AUTHOR_NAME": "autoresearch", "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
             "GIT_COMMITTER_NAME": "autoresearch", "GIT_COMMITTER_EMAIL": "autoresearch@localhost"}


def identity_env(git_cmd) -> dict[str, str]:
    """The git identity fallback, the one place for it: {} when the repository (or the user) has one, else
    autoresearch's own, so that commits work on a machine without a git config. git_cmd: a GitPython `repo.git`."""
    def configured(key: str) -> bool:
        try:
            return bool(git_cmd.config("--get", key).strip())
        except Exception:  # git exits 1 when the key is not set
            return False
    return {} if configured("user.email") and configured("user.name") else dict(_IDENTITY)


@dataclass(frozen=True)
class StatusEntry:
    code: str  # porcelain XY, e.g. " M", "A ", "??"
    path: str

    @property
    def untracked(self) -> bool:
        return self.code == "??"


def parse_status(out: str) -> list[StatusEntry]:
    """Parse `git status --porcelain=v1 -z` output (renames carry the old path as an extra field)."""
    entries = []
    fields = out.split("\0")
    i = 0
    while i < len(fields):
        f = fields[i]
        i += 1
        if len(f) < 4:
            continue
        code, path = f[:2], f[3:]
        entries.append(StatusEntry(code, path))
        if code[0] in "RC":
            if i < len(fields) and fields[i]:
                entries.append(StatusEntry(code, fields[i]))  # the old path changed too
            i += 1
    return entries


def numstat(patch: str) -> tuple[int, int]:
    """(lines added, lines removed) of a unified diff."""
    added = removed = 0
    for line in patch.splitlines():
        if line.startswith("+++") or line.startswith("---"):
            continue
        if line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
    return added, removed


def branch_name(tag: str) -> str:
    return BRANCH_PREFIX + tag


def experiment_ref(exp_id: str) -> str:
    return EXPERIMENT_REF_PREFIX + exp_id


class Ratchet:
    """The git side of one workspace. Every call runs the real git; nothing here resets work it did not create."""

    def __init__(self, root: Path):
        import git  # GitPython; imported here so `core` stays light for the status commands

        self.root = Path(root)
        if not (self.root / ".git").exists():
            try:
                repo = git.Repo(self.root, search_parent_directories=False)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError):
                raise UserError(f"{self.root} is not a git repository; run `git init && git add -A && "
                                "git commit -m init` there first (or create a workspace with the TUI demo).") from None
        else:
            try:
                repo = git.Repo(self.root)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError):
                raise UserError(f"{self.root} is not a valid git repository; check its .git folder.") from None
        self.repo = repo
        self._git = repo.git
        self._GitCommandError = git.GitCommandError
        self._git.update_environment(**identity_env(self._git))

    def _tmp(self) -> Path:
        """Scratch files of git plumbing (temporary indexes, blobs): inside the workspace's state folder, where
        recovery after kill -9 finds and removes them (never in the shared TMPDIR)."""
        d = self.root / STATE_DIR / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def merge(self, base: str, ours: str, theirs: str) -> str | None:
        return merge_text(base, ours, theirs, self._tmp())

    def git(self, *args, **kw) -> str:
        return self._git.execute(["git", *args], **kw)

    # --- queries -----------------------------------------------------------------------------------
    def head(self) -> str:
        try:
            return self.git("rev-parse", "--verify", "-q", "HEAD").strip()
        except self._GitCommandError:
            raise UserError("the workspace repository has no commits yet; commit the trainer files first "
                            "(`git add -A && git commit -m init`).") from None

    def rev(self, ref: str) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "-q", ref + "^{commit}").strip() or None
        except self._GitCommandError:
            return None

    def current_branch(self) -> str | None:
        """The checked-out branch, or None on a detached HEAD."""
        try:
            return self.git("symbolic-ref", "-q", "--short", "HEAD").strip() or None
        except self._GitCommandError:
            return None

    def branch_exists(self, name: str) -> bool:
        return self.rev("refs/heads/" + name) is not None

    def status(self) -> list[StatusEntry]:
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=all", strip_newline_in_stdout=False)
        return parse_status(out)

    def tracked_changes(self, entries: list[StatusEntry] | None = None) -> list[str]:
        entries = self.status() if entries is None else entries
        return sorted({e.path for e in entries if not e.untracked})

    def untracked(self, entries: list[StatusEntry] | None = None) -> set[str]:
        entries = self.status() if entries is None else entries
        return {e.path for e in entries if e.untracked}

    def diff(self, base: str, target: str | None = None, paths: tuple[str, ...] = ("train.py",)) -> str:
        """Unified diff of paths from base to target (a commit) or to the working tree."""
        args = ["diff", "--no-color", "--no-ext-diff", base]
        if target:
            args.append(target)
        return self.git(*args, "--", *paths, strip_newline_in_stdout=False)

    def differs_from_head(self, path: str) -> bool:
        try:
            self.git("diff", "--quiet", "HEAD", "--", path)
            return False
        except self._GitCommandError:
            return True

    def first_parent_history(self, ref: str = "HEAD", limit: int = 1000) -> list[str]:
        return self.git("rev-list", "--first-parent", f"--max-count={limit}", ref).split()

    def show_file(self, commit: str, path: str) -> str | None:
        """A file's text at a commit (None if it has no such file)."""
        try:
            return self.git("show", f"{commit}:{path}", strip_newline_in_stdout=False)
        except self._GitCommandError:
            return None

    def blob(self, commit: str, path: str = EDITABLE) -> str | None:
        """The blob id of a file at a commit: equal ids, equal content."""
        try:
            return self.git("rev-parse", "--verify", "-q", f"{commit}:{path}").strip() or None
        except self._GitCommandError:
            return None

    def refs(self, prefix: str) -> dict[str, str]:
        """{ref name: sha} of every ref under prefix (e.g. "refs/heads/")."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self.git("merge-base", "--is-ancestor", older, newer)
            return True
        except self._GitCommandError:
            return False

    # --- changes -----------------------------------------------------------------------------------
    def checkout_branch(self, name: str) -> bool:
        """Check out branch `name`, creating it at HEAD if needed. Returns True when it was created.

        Uncommitted edits (program.md) travel along: git refuses the switch rather than lose them.
        """
        created = not self.branch_exists(name)
        if self.current_branch() == name:
            return created
        try:
            if created:
                self.git("checkout", "-q", "-b", name)
            else:
                self.git("checkout", "-q", name)
        except self._GitCommandError as e:
            raise UserError(f"could not switch to branch {name}: {_first_line(e)}; commit or revert your "
                            "local changes first.") from None
        return created

    def commit_paths(self, paths: list[str], message: str) -> str:
        """Commit exactly these paths (their working-tree state) with message; hooks are skipped."""
        self.git("commit", "-q", "--no-verify", "--allow-empty-message", "-m", message, "--", *paths)
        return self.head()

    def snapshot(self, message: str, parent: str, paths: list[str] | tuple[str, ...] = ()) -> str:
        """A commit of parent plus the working-tree state of paths, made through a temporary index: nothing
        checked out, no branch moved. Keeps rejected or interrupted proposals browsable. No paths: a commit
        with parent's tree (still a distinct sha, so its results.tsv row has its own commit)."""
        fd, index = tempfile.mkstemp(prefix="index-", dir=self._tmp())
        os.close(fd)
        os.unlink(index)  # git wants to create it itself
        env = {"GIT_INDEX_FILE": index}
        try:
            self.git("read-tree", parent, env=env)
            if paths:
                self.git("add", "-A", "--", *paths, env=env)
            tree = self.git("write-tree", env=env).strip()
            return self.git("commit-tree", tree, "-p", parent, "-m", message or "(no description)", env=env).strip()
        finally:
            try:
                os.unlink(index)
            except FileNotFoundError:
                pass

    def commit_file(self, parent: str, text: str, message: str, path: str = EDITABLE) -> str:
        """A commit of parent with one file's content replaced, made through a temporary index: nothing checked
        out, no branch moved (an experiment's commit, made while another slot's run may be training)."""
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self._tmp())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        try:
            blob = self.git("hash-object", "-w", "--", tmp).strip()
        finally:
            os.unlink(tmp)
        fd, index = tempfile.mkstemp(prefix="index-", dir=self._tmp())
        os.close(fd)
        os.unlink(index)
        env = {"GIT_INDEX_FILE": index}
        try:
            self.git("read-tree", parent, env=env)
            self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
            tree = self.git("write-tree", env=env).strip()
            return self.git("commit-tree", tree, "-p", parent, "-m", message or "(no description)", env=env).strip()
        finally:
            try:
                os.unlink(index)
            except FileNotFoundError:
                pass

    def set_ref(self, ref: str, sha: str) -> None:
        self.git("update-ref", ref, sha)

    def delete_ref(self, ref: str) -> None:
        try:
            self.git("update-ref", "-d", ref)
        except self._GitCommandError:
            pass

    # --- worktrees (one per proposal, under .autoresearch/worktrees/) --------------------------------
    def add_worktree(self, path: Path, commit: str) -> None:
        """A detached checkout of commit at path: the agent works there, never in the person's tree."""
        self.git("worktree", "add", "-q", "--detach", "-f", str(path), commit)

    def remove_worktree(self, path: Path) -> None:
        try:
            self.git("worktree", "remove", "--force", "--force", str(path))
        except self._GitCommandError:
            pass
        if Path(path).exists():
            shutil.rmtree(path, ignore_errors=True)
        self.git("worktree", "prune")

    def worktrees(self) -> list[Path]:
        """Every linked worktree git knows (the main one excluded)."""
        out = self.git("worktree", "list", "--porcelain")
        paths = [Path(line[len("worktree "):]) for line in out.splitlines() if line.startswith("worktree ")]
        return [p for p in paths if p.resolve() != self.root.resolve()]

    def restore(self, tracked: list[str], new_files: list[str], keep_dir: Path | None = None) -> None:
        """Undo a proposal: tracked paths back to HEAD (index and tree); files it created are moved into
        keep_dir (or deleted without one) - a person might have created one meanwhile, so nothing is lost."""
        if tracked:
            head_files = set(self.git("ls-tree", "-r", "--name-only", "HEAD", "--", *tracked).split("\n"))
            in_head = [p for p in tracked if p in head_files]
            added = [p for p in tracked if p not in head_files]
            if in_head:
                self.git("checkout", "-q", "HEAD", "--", *in_head)
            if added:
                self.git("rm", "-q", "--cached", "-f", "--ignore-unmatch", "--", *added)
                new_files = list(new_files) + added
        for rel in new_files:
            p = self.root / rel
            try:
                if not (p.is_file() or p.is_symlink()):
                    continue
                if keep_dir is not None:
                    dest = Path(keep_dir) / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(p, dest)
                else:
                    p.unlink()
            except OSError:
                continue
            # remove folders the proposal created, if they are empty now
            parent = p.parent
            while parent != self.root and parent.is_dir():
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def reset_keep(self, sha: str) -> None:
        """Move the checked-out branch to sha. `--keep` refuses rather than lose local edits (a person's
        program.md), so this never discards work the engine did not create."""
        self.git("reset", "-q", "--keep", sha)

    def move_branch(self, branch: str, sha: str, expected_old: str | None = None) -> None:
        """Move a branch that is not checked out."""
        args = ["update-ref", "refs/heads/" + branch, sha]
        if expected_old:
            args.append(expected_old)
        self.git(*args)


def merge_text(base: str, ours: str, theirs: str, tmp: Path | None = None) -> str | None:
    """Three-way merge of one file (git merge-file): the change base -> theirs applied onto ours, or None if the
    two changes conflict."""
    d = tempfile.mkdtemp(prefix="merge-", dir=tmp)
    try:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            p = Path(d) / name
            p.write_text(text, encoding="utf-8", newline="")
            paths.append(str(p))
        proc = subprocess.run(["git", "merge-file", "-p", "-q", *paths], capture_output=True)
        if proc.returncode != 0:  # > 0: the number of conflicts; < 0: an error
            return None
        return proc.stdout.decode("utf-8")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _first_line(e: Exception) -> str:
    text = getattr(e, "stderr", "") or str(e)
    for line in str(text).splitlines():
        line = line.strip().strip("'").strip()
        if line and not line.startswith("stderr:"):
            return line
        if line.startswith("stderr:"):
            rest = line[len("stderr:"):].strip().strip("'").strip()
            if rest:
                return rest
    return "git failed"
