"""The trusted first process of a sandbox run (inside bubblewrap, or bare in degraded mode).

Kept stdlib-only and run with `python -I -S` so nothing from the project or the venv is imported;
it imports as little as it can (`-X importtime` here: json 12 ms, traceback 43 ms; so the config
comes as marshal, tracebacks from the interpreter's own excepthook). argv: CONFIG_FD RESULT_FD TOKEN_FD;
the config pipe carries a marshalled dict {limits, program, pid_namespace}.

It sets the rlimits, writes b"S" on the result pipe (the parent's proof that the sandbox started)
and runs the program: in bubblewrap's PID namespace right here (when we exit, the kernel kills
whatever the program left behind); without one in a forked child, killing the orphans it
collects as a child subreaper once the program ends.
The program's process writes the token to the result pipe only when the program's code object
returned normally: `os._exit(0)`, `sys.exit(0)` and exceptions never reach that line, and the
token is read from its pipe only then, so no object in the program's memory holds it meanwhile.
What it does not stop: a program written against this harness can read the token pipe itself
(it shares the process), and an answer object whose __eq__ always says True passes asserts, as
in HumanEval's own harness. Closing those needs the tests run in a process apart from the
answer, with values passed by value.
Exit status: 126 setup failed, killed by SIGXCPU when the CPU time ran out, else 0 or 1 (no verdict).
"""
import marshal
import os
import resource
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def fail(msg):
    sys.stderr.write(f"h3ops-sandbox: {msg}\n")
    sys.stderr.flush()
    os._exit(126)


def run_program(source, result_fd, token_fd):
    """Never returns: whatever the program does (even to stdout or the hooks), this process ends here."""
    completed = False
    try:
        sys.argv = ["prog.py"]
        try:
            exec(compile(source, "prog.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            completed = True
        except SystemExit:  # an exit is not a completed program, whatever its code
            pass
        except BaseException as e:
            sys.excepthook(type(e), e, e.__traceback__.tb_next)  # from the program's first frame on
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                completed = False
        if completed:
            os.write(result_fd, os.read(token_fd, 256))
    finally:
        os._exit(0 if completed else 1)


def children():
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return found


def kill_leftovers():
    """Orphans of the program were re-parented to us (subreaper): kill and reap them all."""
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
        cfg = marshal.loads(f.read())
    if not cfg["pid_namespace"]:
        # No PID namespace to hold the run: orphans of the program must be re-parented to us.
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            fail("cannot become a child subreaper")
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
    if cfg["pid_namespace"]:
        # bubblewrap's init reaps, and when we (its one child) exit the kernel kills everything
        # else in the namespace: no fork needed, the program runs right here.
        run_program(cfg["program"], result_fd, token_fd)
    try:
        pid = os.fork()
    except OSError as e:
        fail(f"cannot fork the program: {e}")
    if pid == 0:
        run_program(cfg["program"], result_fd, token_fd)
    os.close(result_fd)
    os.close(token_fd)
    _, status = os.waitpid(pid, 0)
    kill_leftovers()
    if os.WIFSIGNALED(status):
        os.kill(os.getpid(), os.WTERMSIG(status))  # die as the program died (SIGXCPU: CPU limit)
    os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 1)

main()
