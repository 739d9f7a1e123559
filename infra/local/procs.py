"""Process groups with pid records: start a server, find it again, stop it and everything it spawned.

Every server runs in its own session (`start_new_session=True`), so one `killpg` reaches the
children it forks (Airflow's api-server, scheduler, dag-processor and triggerer; MLflow's
uvicorn workers). A record keeps the pid *and* its start time, so a pid reused after a reboot
is never mistaken for ours.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from h3ops import atomic


class StackError(RuntimeError):
    """A problem the user can fix (a busy port, a server that never became healthy, …)."""


@dataclass
class ProcRecord:
    name: str
    pid: int
    create_time: float
    cmd: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """The live process this record describes, or None when it is gone (or the pid was reused)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None


def record_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.pid.json"


def read_record(state_dir: Path, name: str) -> ProcRecord | None:
    path = record_path(state_dir, name)
    try:
        return ProcRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def start(name: str, cmd: list[str], env: dict[str, str], state_dir: Path, log_dir: Path,
          cwd: Path | None = None) -> ProcRecord:
    """Start `cmd` in a new session, output appended to `<log_dir>/<name>.log`, and record it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    rec = ProcRecord(name, proc.pid, psutil.Process(proc.pid).create_time(), cmd, str(log))
    atomic.write_json(record_path(state_dir, name), asdict(rec))
    return rec


def group_members(rec: ProcRecord) -> list[psutil.Process]:
    """The leader, its descendants and anything else still in its process group.

    When the leader is gone its orphans keep the group id (Linux does not hand out a pid still in
    use as a group id); when the pid now belongs to someone else, that group is not ours.
    """
    members: dict[int, psutil.Process] = {}
    leader = rec.process()
    if leader is None and psutil.pid_exists(rec.pid):
        try:
            if psutil.Process(rec.pid).status() != psutil.STATUS_ZOMBIE:
                return []  # pid reused by an unrelated process
        except psutil.Error:
            pass
    if leader is not None:
        members[leader.pid] = leader
        for child in leader.children(recursive=True):
            members[child.pid] = child
    for proc in psutil.process_iter():
        try:
            if (proc.pid not in members and os.getpgid(proc.pid) == rec.pid
                    and proc.create_time() >= rec.create_time - 1.0):
                members[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    return list(members.values())


def stop(recs: ProcRecord | list[ProcRecord], grace_s: float = 15.0) -> dict[str, int]:
    """SIGTERM every group (and stray descendants) at once, SIGKILL what is left after `grace_s`.

    Signalling all groups before waiting makes `down` take as long as the slowest server, not
    the sum. Returns how many processes each record had. Leaders that are our children are reaped.
    """
    recs = [recs] if isinstance(recs, ProcRecord) else list(recs)
    members = {rec.name: group_members(rec) for rec in recs}
    pending = [rec for rec in recs if members[rec.name]]
    alive = [proc for rec in pending for proc in members[rec.name]]
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if not alive:
            break
        for rec in pending:
            try:
                os.killpg(rec.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in alive:  # descendants that left the group (setsid) still belong to us
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=wait_s)
    for rec in recs:
        try:
            os.waitpid(rec.pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if alive:
        raise StackError(f"could not stop pids {[p.pid for p in alive]}")
    return {name: len(procs_) for name, procs_ in members.items()}


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_owner(port: int) -> str:
    """'pid 123 (python)' for the listener on `port` when we may see it, else ''."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, deadline_s: float, recs: list[ProcRecord] = (), every_s: float = 1.0):
    """Poll `check()` until it returns a truthy value; fail early when a watched process died."""
    end = time.monotonic() + deadline_s
    last_error = ""
    while time.monotonic() < end:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 — a server that is starting refuses connections
            last_error = f"{type(exc).__name__}: {exc}"
        for rec in recs:
            if not rec.alive():
                raise StackError(f"{what}: process {rec.name!r} exited; see {rec.log}")
        time.sleep(every_s)
    raise StackError(f"{what}: not ready after {deadline_s:.0f} s ({last_error or 'no answer'}); "
                     f"see {', '.join(r.log for r in recs) or 'the logs'}")
