"""Run untrusted generated code in a separate process: no network, read-only filesystem except a
temporary work dir, rlimits (CPU, memory, file size, processes) and a wall-clock timeout.

Isolation comes from Linux namespaces via util-linux `unshare`: a new network namespace (only a
down loopback), a mount namespace where every mount is remounted read-only except the work dir,
and a PID namespace so killing its first process kills every descendant (fork bombs included).
As real root the program also drops to uid 65534, since root ignores RLIMIT_NPROC. Without
namespaces the sandbox refuses to run unless `allow_degraded=True`; then results say so.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_BOOT = Path(__file__).with_name("_sandbox_boot.py")
NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """Namespaces cannot be created here and degraded execution was not allowed."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    processes: int = 32


@dataclass
class RunResult:
    status: str  # passed | failed | timeout | error
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


def _world_runnable(path: str) -> bool:
    """True when an unprivileged user can reach and run `path` (every parent o+x, the file o+rx)."""
    p = Path(path).resolve()
    try:
        if p.stat().st_mode & 0o005 != 0o005:
            return False
        return all(d.stat().st_mode & 0o001 for d in p.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def sandbox_python() -> str:
    """An interpreter the unprivileged sandbox user can run (generated code needs only the stdlib)."""
    for cand in (getattr(sys, "_base_executable", sys.executable), sys.executable,
                 shutil.which("python3") or "", "/usr/bin/python3"):
        if cand and (os.geteuid() != 0 or _world_runnable(cand)):
            return str(Path(cand).resolve())
    raise SandboxUnavailable("no Python interpreter is readable by the unprivileged sandbox user (uid 65534)")


def _unshare_cmd() -> list[str]:
    cmd = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        cmd.insert(1, "--map-root-user")  # unprivileged user namespace
    return cmd


@functools.lru_cache(maxsize=1)
def namespaces_available() -> str | None:
    """None when `unshare` can make the namespaces here, else the reason it cannot."""
    if shutil.which("unshare") is None:
        return "util-linux `unshare` not found"
    try:
        p = subprocess.run([*_unshare_cmd(), "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    return None if p.returncode == 0 else f"unshare failed: {p.stderr.strip() or p.returncode}"


class Sandbox:
    def __init__(self, limits: Limits | None = None, *, allow_degraded: bool = False):
        self.limits = limits or Limits()
        self.reason = namespaces_available()
        if self.reason and not allow_degraded:
            raise SandboxUnavailable(
                f"cannot isolate generated code ({self.reason}); refusing to execute it. "
                "Pass allow_degraded=True to run with rlimits and a timeout only (recorded in results)."
            )

    @property
    def isolation(self) -> dict:
        if self.reason:
            return {"network_isolated": False, "readonly_fs": False, "pid_namespace": False,
                    "degraded": True, "reason": self.reason}
        return {"network_isolated": True, "readonly_fs": True, "pid_namespace": True, "degraded": False,
                "uid": NOBODY if os.geteuid() == 0 else os.geteuid()}

    def run_python(self, source: str) -> RunResult:
        """Execute `source` with a Python interpreter inside the sandbox."""
        workdir = Path(tempfile.mkdtemp(prefix="h3ops-sbx-")).resolve()
        try:
            (workdir / "prog.py").write_text(source)
            drop = os.geteuid() == 0 and not self.reason
            if drop:
                os.chown(workdir, NOBODY, NOBODY)
            argv = [sandbox_python(), "-I", "-S", "prog.py"]
            if self.reason:
                cmd, preexec = argv, functools.partial(_plain_limits, self.limits)
            else:
                cfg = {"workdir": str(workdir), "uid": NOBODY if drop else None, "argv": argv,
                       "limits": {k: v for k, v in asdict(self.limits).items() if k != "timeout_s"}}
                cmd, preexec = [*_unshare_cmd(), sys.executable, "-I", "-S", str(_BOOT), json.dumps(cfg)], None
            return self._spawn(cmd, workdir, preexec)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _spawn(self, cmd, workdir, preexec) -> RunResult:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
        try:
            out, err = proc.communicate(timeout=self.limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            # The whole session: unshare and the namespace's first process (whose death kills the rest).
            _killpg(proc.pid)
            out, err = proc.communicate()
            timed_out = True
        finally:
            _killpg(proc.pid)
        wall = time.monotonic() - t0
        out_s, err_s = out.decode(errors="replace"), err.decode(errors="replace")
        iso = dict(self.isolation)
        lines = []
        for line in err_s.splitlines():
            if line.startswith("H3OPS-SANDBOX "):
                iso.update(json.loads(line[len("H3OPS-SANDBOX "):]))
            else:
                lines.append(line)
        err_s = "\n".join(lines)
        rc = proc.returncode
        # CPU-limit kills reach us as odd exit codes through `unshare`; a failure after using up
        # (nearly) the CPU allowance is a timeout.
        if timed_out or (rc != 0 and wall >= 0.9 * self.limits.cpu_s):
            status = "timeout"
        elif rc == 126 and "h3ops-sandbox:" in err_s:
            status = "error"
        else:
            status = "passed" if rc == 0 else "failed"
        return RunResult(status, rc, out_s[-4000:], err_s[-4000:], round(wall, 3), iso)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _plain_limits(limits: Limits) -> None:  # degraded mode: rlimits only, in the child before exec
    import resource

    for name, value in (("RLIMIT_CPU", limits.cpu_s), ("RLIMIT_AS", limits.memory_bytes),
                        ("RLIMIT_FSIZE", limits.file_bytes), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
