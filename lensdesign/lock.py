"""One writer per run directory: an exclusive `fcntl.flock` on RUN/.lensdesign.lock.

The kernel releases the lock when its process ends, however it ends (even `kill -9`), so a lock left by a dead
process is simply taken over; the file records the holder's pid and command for the refusal message. A clean
release removes the file; one still holding a pid when its lock is taken over was left by a killed process.
Under torchrun only rank 0 takes the lock (the ranks of one job write one run directory together).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from lensdesign.errors import LensdesignError

LOCK = ".lensdesign.lock"


def _writer_rank() -> bool:
    """False on the ranks other than 0 of a torchrun job (WORLD_SIZE > 1); True otherwise."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def _holder(path: Path) -> str:
    """'pid N, COMMAND' recorded in a lock file, or 'another process'."""
    try:
        pid, _, command = path.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    return f"pid {pid}, {command}" if pid.isdigit() else "another process"


def _refuse(run: Path, lock: Path, command: str) -> LensdesignError:
    return LensdesignError(f"{run}: another lensdesign process ({_holder(lock)}) is writing this run directory; wait for it "
                           f"to finish (or stop it) before '{command}', or choose another run directory")


def ensure_unlocked(run: str | Path, command: str) -> None:
    """Raise the one-line refusal if a live process holds the lock of `run` (creates nothing)."""
    p = Path(run) / LOCK
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refuse(Path(run), p, command) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run: str | Path, command: str, log: Callable[[str], None] | None = None,
             create: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of run directory `run` for the duration of the block; `create`: make the folder
    when missing (else a missing folder is left to the command's own error).

    Raises LensdesignError at once when another live process holds it; takes over a lock whose process died
    (reported through `log`).
    """
    run = Path(run)
    if not _writer_rank() or (not create and not run.is_dir()):
        yield
        return
    run.mkdir(parents=True, exist_ok=True)
    p = run / LOCK
    while True:
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(run, p, command) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(p).st_ino  # not a file a releasing holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        stale = os.read(fd, 256).decode(errors="replace").strip()
        if stale and log is not None:
            pid = stale.split(" ", 1)[0]
            log(f"taking over the lock of {run} left by pid {pid} (no longer running)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(p)
        os.close(fd)  # closing releases the lock
