"""tui.watch: wake-ups on file changes (watchfiles), polling on network filesystems."""

import threading
import time
from collections import namedtuple

import psutil

from tui.watch import ChangeWaiter, needs_polling


def test_a_change_to_a_watched_name_wakes_the_waiter(tmp_path):
    stop = threading.Event()
    w = ChangeWaiter([tmp_path], {"results.tsv"}, stop, timeout=5.0)
    try:
        threading.Timer(0.5, lambda: (tmp_path / "results.tsv").write_text("x\n")).start()
        t0 = time.monotonic()
        assert w.wait() is True
        assert time.monotonic() - t0 < 4.0  # woken by the change, not by the 5 s timeout
    finally:
        w.close()
    # another file in the same folder does not wake it: the wait ends with its timeout
    w = ChangeWaiter([tmp_path], {"results.tsv"}, stop, timeout=1.0)
    try:
        threading.Timer(0.2, lambda: (tmp_path / "other.txt").write_text("y\n")).start()
        t0 = time.monotonic()
        assert w.wait() is False and time.monotonic() - t0 >= 0.9
    finally:
        w.close()


def test_stop_ends_a_wait_at_once(tmp_path):
    stop = threading.Event()
    w = ChangeWaiter([tmp_path], None, stop, timeout=30.0)
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    assert w.wait() is False
    assert time.monotonic() - t0 < 5.0
    w.close()


def test_a_folder_that_appears_later_is_watched(tmp_path):
    stop = threading.Event()
    later = tmp_path / "experiments" / "0009"
    w = ChangeWaiter([later], {"train.log"}, stop, timeout=0.3)
    try:
        t0 = time.monotonic()
        assert w.wait() is False and time.monotonic() - t0 >= 0.25  # nothing to watch yet: a plain sleep
        later.mkdir(parents=True)
        w.timeout = 5.0
        threading.Timer(0.5, lambda: (later / "train.log").write_text("step 1\n")).start()
        t0 = time.monotonic()
        assert w.wait() is True and time.monotonic() - t0 < 4.0  # the new folder is watched
    finally:
        w.close()


def test_network_filesystems_are_polled(tmp_path, monkeypatch):
    assert needs_polling(tmp_path) is False  # this machine's temp folder is local
    Part = namedtuple("Part", "device mountpoint fstype opts")
    fake = [Part("/dev/sda1", "/", "ext4", "rw"), Part("server:/export", str(tmp_path), "nfs4", "rw")]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=True: fake)
    assert needs_polling(tmp_path / "ws") is True
    assert needs_polling(tmp_path.parent) is False  # the longest matching mount point decides
    w = ChangeWaiter([tmp_path], None, threading.Event(), timeout=1.0)
    assert w.polling is True
