"""One sandbox run's control group: a hard total on memory and on the number of processes.

Rlimits are per process (six children of RLIMIT_AS each still add up), so the total needs a cgroup.
Supported: cgroup v1 `memory` + `pids` hierarchies under /sys/fs/cgroup, the layout of this
machine and CI (measured in bench/README.md). Where they are missing or not writable, `create`
returns None and the sandbox falls back to splitting the memory budget across RLIMIT_AS x
RLIMIT_NPROC (see sandbox.py). cgroup v2 is not handled yet.
"""
from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count()


def _own_path(controller: str) -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    except OSError:
        pass
    return None


class RunCgroup:
    def __init__(self, dirs: dict[str, Path]):
        self.dirs = dirs

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> "RunCgroup | None":
        """A fresh child of this process's own memory and pids cgroups, or None where not possible."""
        name = f"h3ops-sbx-{os.getpid()}-{next(_counter)}"
        dirs: dict[str, Path] = {}
        try:
            for ctl in ("memory", "pids"):
                own = _own_path(ctl)
                base = _ROOT / ctl / (own or "/").lstrip("/")
                if own is None or not (base / "cgroup.procs").exists():
                    raise OSError(f"no cgroup v1 {ctl} hierarchy")
                (base / name).mkdir()
                dirs[ctl] = base / name
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
            try:  # swap too, where swap accounting exists (no swap on this machine)
                (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            except OSError:
                pass
            (dirs["pids"] / "pids.max").write_text(str(max_pids))
        except OSError:
            cls(dirs).remove()
            return None
        return cls(dirs)

    def enter_cmd(self) -> list[str]:
        """A prefix that moves itself into this cgroup, then execs the rest of the command line.

        A shell rather than Popen's preexec_fn: preexec_fn makes Python fork() the whole evaluator
        (a loaded model and all) instead of vfork()ing it.
        """
        n = len(self.dirs)
        script = "".join(f'echo 0 > "${i}" && ' for i in range(1, n + 1)) + f'shift {n} && exec "$@"'
        return ["/bin/sh", "-c", script, "h3ops-cgroup", *(str(d / "cgroup.procs") for d in self.dirs.values())]

    def oom_kills(self) -> int:
        try:
            for line in (self.dirs["memory"] / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, KeyError, ValueError):
            pass
        return 0

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.dirs["pids"] / "cgroup.procs").read_text().split()]
        except (OSError, KeyError):
            return []

    def kill_all(self, within_s: float = 0.5) -> None:
        """SIGKILL every member until none is left (new forks are caught on the next pass)."""
        deadline = time.monotonic() + within_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def remove(self) -> None:
        self.kill_all()
        for d in self.dirs.values():
            deadline = time.monotonic() + 0.3
            while True:  # rmdir fails while the last killed members are still exiting
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
