"""A run folder's names and its lock, without torch: the CLI refuses a busy folder
before it imports torch (tcl_fast.training.checkpoint re-exports these)."""
from __future__ import annotations

import errno
import os

try:
    import fcntl
except ImportError:  # no flock (Windows): runs are unlocked there
    fcntl = None

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"


def resolve_checkpoint(path: str) -> str:
    """Accept a checkpoint file or a run folder containing one."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    return path


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.lock`` for the whole run.

    The OS drops the lock when the process ends, however it ends (even SIGKILL),
    so no stale lock can outlive its run. The holder writes its PID into the
    file so that a refused second run can name it.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        if fcntl is None:
            return self
        self._created = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock_or_raise(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def check_free(self) -> None:
        """Raise RunFolderBusy if a live process holds the lock now; takes nothing.

        The CLI calls this before it imports torch, so a second run on a busy folder
        is refused at once instead of after seconds of imports. acquire() is still what
        guards the run: a run that starts between the two is caught there."""
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR)  # no lock file: nobody has run here
        except OSError:
            return
        try:
            self._lock_or_raise(fd)  # closing fd below drops the lock again
        finally:
            os.close(fd)

    def _lock_or_raise(self, fd: int) -> None:
        """Take the exclusive flock on fd without waiting, or raise RunFolderBusy naming
        the holder."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderBusy(self.folder, self._holder()) from None

    def _holder(self) -> int | None:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or "x")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        if self._created and os.listdir(self.folder) == [LOCK_NAME]:
            # A run refused before it wrote anything leaves no folder behind.
            os.remove(self.path)
            os.rmdir(self.folder)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class RunFolderBusy(Exception):
    """Another live process holds the run folder's lock."""

    def __init__(self, folder: str, pid: int | None):
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"run folder {folder!r} is in use by {who} (another training or --resume of it); "
                         "wait for it to finish or choose another --out")
        self.folder, self.pid = folder, pid
