"""One writer at a time: a lock file holding its holder's pid and host, created exclusively.

A second writer fails at once with a message naming the holder (or, with ``wait_seconds``, waits that long
for it first). A lock left by a process that is gone (same host, pid no longer alive) is taken over with a
warning, so a crash never blocks the next run; so is one that names no owner and is older than a few seconds
(the owner is written before the lock becomes visible, so only a damaged lock has none).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path


UNREADABLE_LOCK_STALE_SECONDS = 5.0


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it."""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StepLock:
    """``with StepLock(path, what="training stage1_model"):`` ... the lock is released on exit."""

    def __init__(self, path: str | Path, what: str, warn: Callable[[str], None] = print, wait_seconds: float = 0):
        self.path, self.what, self.warn, self.wait_seconds = Path(path), what, warn, wait_seconds
        self.holder = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self) -> StepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                self._create()
                return self
            except FileExistsError:
                try:
                    self._take_over_if_stale()
                except LockHeldError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)

    def _create(self) -> None:
        """The lock appears with its holder already written (a hard link of a finished temporary file), so a
        crash or a full disk never leaves a lock without an owner; FileExistsError if it is held."""
        draft = self.path.with_name(f".{self.path.name}.{os.getpid()}.{time.monotonic_ns()}")
        try:
            draft.write_text(json.dumps(self.holder))
            os.link(draft, self.path)
        finally:
            draft.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError):
            holder = {}
        if not isinstance(holder, dict) or "pid" not in holder:
            if self._age() > UNREADABLE_LOCK_STALE_SECONDS:  # a writer that had an owner to write did so at once
                self.warn(f"warning: {self.path} names no owner (a lock from an older version, or damaged); "
                          "taking it over")
                self.path.unlink(missing_ok=True)
                return
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        if host == self.holder["host"] and isinstance(pid, int) and not process_alive(pid):
            self.warn(f"warning: {self.path} was left by process {pid}, which is gone; taking it over")
            self.path.unlink(missing_ok=True)
            return
        raise LockHeldError(f"{self.what} is already running (process {pid} on {host}, lock {self.path}); wait "
                            f"for it to finish, or remove the lock file if that process is gone")

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def __exit__(self, *exc) -> None:
        try:
            if json.loads(self.path.read_text()) == self.holder:
                self.path.unlink()
        except (OSError, ValueError):
            pass
