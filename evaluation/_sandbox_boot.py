"""Runs inside fresh namespaces (made by `unshare`) before the untrusted program: lock it down, exec.

Kept stdlib-only and run with `python -I -S` so nothing from the project or the venv is imported.
argv[1] is a JSON config: workdir, limits, uid to drop to (or null), the program's argv.
"""
import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
_OPT = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
        "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
libc = ctypes.CDLL(None, use_errno=True)


def mount(src, target, flags):
    rc = libc.mount(src and src.encode(), target.encode(), None, ctypes.c_ulong(flags), None)
    return 0 if rc == 0 else ctypes.get_errno()


def mounts():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            # Mount points escape spaces as \040.
            yield parts[4].replace("\\040", " "), parts[5]


def main():
    cfg = json.loads(sys.argv[1])
    wd = cfg["workdir"]
    report = {"readonly_fs": False, "rw_failed": [], "uid": os.getuid()}
    # The work dir becomes its own mount so it stays writable when everything else turns read-only.
    if mount(wd, wd, MS_BIND) != 0:
        sys.stderr.write("h3ops-sandbox: cannot bind-mount the work dir\n")
        sys.exit(126)
    for point, opts in sorted(set(mounts())):
        if point == wd:
            continue
        # Keep the mount's locked flags (nosuid, nodev, …): a remount without them is refused.
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts.split(","):
            flags |= _OPT.get(o, 0)
        if mount(None, point, flags) != 0 and point == "/":
            report["rw_failed"].append(point)
    report["readonly_fs"] = "/" not in report["rw_failed"]
    if cfg.get("require_readonly", True) and not report["readonly_fs"]:
        sys.stderr.write("h3ops-sandbox: cannot make the root filesystem read-only\n")
        sys.exit(126)
    lim = cfg["limits"]
    for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_AS", lim["memory_bytes"]),
                        ("RLIMIT_FSIZE", lim["file_bytes"]), ("RLIMIT_NPROC", lim["processes"]),
                        ("RLIMIT_NOFILE", 64), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    if cfg.get("uid") is not None:
        # Real root ignores RLIMIT_NPROC and file permissions: run as an unprivileged user.
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    report["uid"] = os.getuid()
    os.chdir(wd)
    sys.stderr.write("H3OPS-SANDBOX " + json.dumps(report) + "\n")
    sys.stderr.flush()
    env = {"PATH": "/usr/bin:/bin", "HOME": wd, "TMPDIR": wd, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    try:
        os.execve(cfg["argv"][0], cfg["argv"], env)
    except OSError as e:
        sys.stderr.write(f"h3ops-sandbox: cannot run {cfg['argv'][0]}: {e}\n")
        sys.exit(126)


main()
