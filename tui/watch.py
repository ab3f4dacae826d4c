"""Wake-ups on file changes through watchfiles: inotify where it works, polling on network filesystems."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil

# Filesystems whose changes made on another machine never reach this machine's inotify: poll them instead.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
              "fuse.sshfs", "fuse.s3fs", "fuse.rclone", "fuse.glusterfs", "fuse.cephfs", "afs", "virtiofs")
POLL_DELAY_MS = 500  # polling mode: one scan of the watched folders every half second (what we did before)
STEP_MS = 50  # how long watchfiles waits for more changes after one: the latency of a wake-up


def needs_polling(path: Path) -> bool:
    """Is path on a network filesystem (NFS, SMB, sshfs, ...), where inotify misses the other hosts' writes?"""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        parts = psutil.disk_partitions(all=True)
    except (OSError, RuntimeError):
        return False
    for p in parts:
        mount = p.mountpoint.rstrip("/") or "/"
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, p.fstype
    return fstype.lower() in NETWORK_FS


class ChangeWaiter:
    """wait(timeout) returns early when a file with one of `names` changes in one of `folders` (not recursive).

    One watchfiles watcher for the waiter's lifetime. A folder that does not exist yet is watched once it
    does; where no watcher can be made (inotify limits), wait() is a plain sleep, as polling was before.
    """

    def __init__(self, folders: list[Path], names: set[str] | None, stop: threading.Event, timeout: float):
        self.folders = [Path(f) for f in folders]
        self.names = names
        self.stop = stop
        self.timeout = timeout
        self._gen = None
        self._watching: tuple[Path, ...] = ()
        self.polling = bool(self.folders) and needs_polling(self.folders[0])
        self.failed: str | None = None

    def _filter(self, _change, path: str) -> bool:
        return self.names is None or os.path.basename(path) in self.names

    def _open(self) -> None:
        existing = tuple(f for f in self.folders if f.is_dir())
        if existing == self._watching and self._gen is not None:
            return
        self.close()
        if not existing:
            return
        import watchfiles  # lazy: not on the path of the first frame
        try:
            gen = watchfiles.watch(*existing, watch_filter=self._filter, debounce=200, step=STEP_MS,
                                   rust_timeout=max(1, int(self.timeout * 1000)), yield_on_timeout=True,
                                   stop_event=self.stop, raise_interrupt=False, recursive=False,
                                   force_polling=self.polling, poll_delay_ms=POLL_DELAY_MS)
            self._gen = gen
            self._watching = existing
        except (OSError, RuntimeError) as e:
            self.failed = str(e)

    def wait(self) -> bool:
        """Block until a watched file changes (True), the timeout passes or stop is set (False)."""
        if self.stop.is_set():
            return False
        if self.failed is None:
            self._open()
        if self._gen is None:
            self.stop.wait(self.timeout)
            return False
        try:
            changes = next(self._gen)
        except StopIteration:  # the stop event was set
            self._gen = None
            return False
        except (OSError, RuntimeError) as e:  # a watched folder vanished, or the watcher broke
            self._gen = None
            self._watching = ()
            if not any(f.is_dir() for f in self.folders):
                return True  # the folder is gone: that is a change, and it is watched again once it is back
            self.failed = str(e)
            return True
        if not all(f in self._watching for f in self.folders if f.is_dir()):
            self.close()  # a folder appeared: watch it from the next wait
        return bool(changes)

    def close(self) -> None:
        gen, self._gen = self._gen, None
        self._watching = ()
        if gen is not None:
            gen.close()
