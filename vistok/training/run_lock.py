"""One process per run directory: an exclusive lock held for the whole run.

Two processes on one run directory would resume each other's live checkpoints and leave a mix of both. The
first to start holds `fcntl.flock` on `<run_dir>/.vistok.lock` (the kernel drops it when the process dies,
however it dies, so a lock left by a dead process is simply taken over) and writes its PID, host and start
time there for the message the second one prints. Hydra saves `.hydra/*.yaml` before any vistok code runs,
so the holder also keeps its own copies in the lock file and a refused process puts them back.

Only the launching process takes the lock: the other ranks of the same run (DDP / FSDP workers started by
Lightning, torchrun or srun) share the directory by design.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".vistok.lock"
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


class RunDirectoryInUse(RuntimeError):
    """Another live process holds the run directory."""


def is_launching_process() -> bool:
    """False in the other ranks of a multi-process run (any rank variable set to a non-zero value)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


class RunLock:
    """`with RunLock(run_dir):` holds the run directory for the block; raises RunDirectoryInUse if taken."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if is_launching_process():
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            self._restore_hydra_files(holder)
            raise RunDirectoryInUse(
                f"run directory {self.run_dir} is in use by PID {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} (running since {holder.get('started', '?')}); wait for it to end, "
                "or give this run its own directory (run_name=NAME or hydra.run.dir=DIR)") from None
        except OSError as error:  # a filesystem without flock (some network mounts): run unlocked, say so
            os.close(fd)
            print(f"warning: cannot lock {self.path} ({error}); nothing stops a second process on this directory")
            return
        self._fd = fd
        self._write(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _write(self, fd: int) -> None:
        hydra_dir = self.run_dir / ".hydra"
        saved = {name: (hydra_dir / name).read_text() for name in HYDRA_FILES if (hydra_dir / name).is_file()}
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "hydra": saved}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = os.pread(fd, 1 << 22, 0)
            return json.loads(data.decode()) if data else {}
        except (OSError, ValueError):
            return {}

    def _restore_hydra_files(self, holder: dict) -> None:
        """Put back the holder's `.hydra/*.yaml`, which Hydra overwrote when this process started."""
        hydra_dir = self.run_dir / ".hydra"
        for name, text in (holder.get("hydra") or {}).items():
            if name in HYDRA_FILES:
                (hydra_dir / name).write_text(text)
