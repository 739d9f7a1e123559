"""The trusted first process of a sandbox run (inside bubblewrap, or bare in degraded mode).

Kept stdlib-only and run with `python -I -S` so nothing from the project or the venv is imported.
argv: CONFIG_FD RESULT_FD TOKEN_FD. The config pipe carries JSON {limits, program, pid_namespace}.

It sets the rlimits, writes b"S" on the result pipe (the parent's proof that the sandbox started),
forks the program and, as a child subreaper, kills whatever the program left behind once it ends.
The program's process writes the token to the result pipe only when the program's code object
returned normally: `os._exit(0)`, `sys.exit(0)` and exceptions never reach that line, and the
token is read from its pipe only then, so it is nowhere in the program's memory while it runs.
Exit status: 0 the program ran to its end, 1 it did not, 3 it used up its CPU time, 126 setup failed.
"""
import ctypes
import json
import os
import resource
import signal
import sys
import traceback

PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36


def fail(msg):
    sys.stderr.write(f"h3ops-sandbox: {msg}\n")
    sys.stderr.flush()
    os._exit(126)


def run_program(source, result_fd, token_fd):
    sys.argv = ["prog.py"]
    try:
        exec(compile(source, "prog.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        sys.stdout.flush()
        sys.stderr.flush()
    except SystemExit:  # an exit is not a completed program, whatever its code
        sys.stdout.flush()
        os._exit(1)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os.write(result_fd, os.read(token_fd, 256))
    os._exit(0)


def children():
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return found


def kill_leftovers(pid_namespace):
    """Orphans of the program were re-parented to us (subreaper): kill and reap them all."""
    if pid_namespace and os.getpid() == 2:  # pid 1 is bubblewrap's init: -1 is only this run
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        left = children()
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def main():
    cfg_fd, result_fd, token_fd = (int(x) for x in sys.argv[1:4])
    with os.fdopen(cfg_fd, "rb") as f:
        cfg = json.loads(f.read())
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        fail("cannot become a child subreaper")
    # Not dumpable: the program (same uid) cannot read our memory or fds through /proc.
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    lim = cfg["limits"]
    try:
        for name, value in (("RLIMIT_AS", lim["address_space_bytes"]), ("RLIMIT_FSIZE", lim["file_bytes"]),
                            ("RLIMIT_NPROC", lim["processes"]), ("RLIMIT_NOFILE", 64), ("RLIMIT_CORE", 0)):
            resource.setrlimit(getattr(resource, name), (value, value))
        # SIGXCPU at the soft limit tells a CPU stop from other kills; SIGKILL one second later.
        resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    except (ValueError, OSError) as e:
        fail(f"cannot set limits: {e}")
    os.write(result_fd, b"S")
    try:
        pid = os.fork()
    except OSError as e:
        fail(f"cannot fork the program: {e}")
    if pid == 0:
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        run_program(cfg["program"], result_fd, token_fd)
    os.close(result_fd)
    os.close(token_fd)
    _, status = os.waitpid(pid, 0)
    kill_leftovers(cfg.get("pid_namespace", False))
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        os._exit(3)
    os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)


main()
