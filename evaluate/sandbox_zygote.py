"""The sandbox's zygote process: confines itself once, preloads the numeric libraries, then forks one
confined runner per snippet. Run by `sandbox.Sandbox` as `python -I sandbox_zygote.py CONFIG_JSON` (the config names the
control socket's descriptor); standard library only.

Per snippet (a request on the control socket with three file descriptors: the code in a memfd, the pipe
for its output, the pipe for its status):

    zygote ──fork──► executor: new mount + PID namespaces, a fresh size-limited tmpfs at /snippet
                       └──fork──► runner = PID 1 of that namespace: new session, rlimits, no capabilities,
                                  no_new_privs, Landlock, seccomp, (audit hook), then exec() of the code
    executor: waits until the deadline, SIGKILLs the runner (the kernel then kills every process left in
    its PID namespace), reports {returncode, limit, cpu_seconds, seconds} on the status pipe.

Levels, tried in order for isolation="auto":
- "namespaces": user/mount/net/IPC/UTS namespaces for the zygote, a new root holding only the system
  and Python folders (read-only) and /dev/null, zero, urandom; per snippet the above.
- "landlock": no namespaces; Landlock confines reads to the system and Python folders and writes to the
  snippet's own folder; seccomp leaves the snippet no way to create a process or a socket.
- "none": rlimits and the audit hook only; the handshake says it is not safe.
After setting up, the zygote runs a probe snippet through the same path and reports what held.
"""

from __future__ import annotations

import builtins
import io
import json
import linecache
import os
import resource
import select
import signal
import socket
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import confine  # noqa: E402

del sys.path[0]

SYSTEM_READ = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime"]
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def python_read_paths() -> list[str]:
    """The interpreter's prefixes and its site-packages: what imports need; not source checkouts on sys.path."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)}
    return sorted(roots)


class State:
    """What the zygote set up: its level, the mechanisms in force, and where snippets work."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.base = cfg["base"]
        self.level = "none"
        self.mechanisms: list[str] = ["rlimits"]
        self.errors: list[str] = []
        self.namespaces = False
        self.landlock = 0
        self.seccomp = confine.arch() is not None
        self.read_paths = SYSTEM_READ + python_read_paths()
        self.statm = os.open("/proc/self/statm", os.O_RDONLY)

    def setup(self) -> None:
        wanted = self.cfg["isolation"]
        if wanted in ("auto", "namespaces"):
            try:
                confine.enter_namespaces()
                self.mechanisms += ["user/mount/net/ipc/uts namespaces"]
                confine.build_root(os.path.join(self.base, "root"), self.read_paths, DEVICES)
                self.namespaces, self.level = True, "namespaces"
                self.mechanisms += [
                    "read-only minimal root",
                    "PID namespace per snippet",
                    "tmpfs work folder per snippet",
                ]
            except OSError as error:
                self.errors.append(f"namespaces: {error}")
        if wanted != "none":
            self.landlock = confine.landlock_abi()
            if self.landlock:
                self.mechanisms.append(f"landlock (ABI {self.landlock})")
                if not self.namespaces:
                    self.level = "landlock"
            else:
                self.errors.append("landlock: not available in this kernel")
            if self.seccomp:
                self.mechanisms.append("seccomp")
            else:
                self.errors.append(f"seccomp: no filter written for {os.uname().machine}")
        else:
            self.landlock, self.seccomp = 0, False
        if self.cfg["audit_hook"]:
            self.mechanisms.append("audit hook")
        os.makedirs(self.runs_dir, exist_ok=True)

    @property
    def runs_dir(self) -> str:
        return confine.WORK if self.namespaces else os.path.join(self.base, "runs")

    def address_space(self) -> int:
        """The zygote's current virtual size in bytes (a forked runner starts at about this size)."""
        return int(os.pread(self.statm, 64, 0).split()[0]) * os.sysconf("SC_PAGE_SIZE")


# ---- the runner: confine this process, run the code ---------------------------------------------------------


def _audit_hook(root: str):
    """A first line of defence with clear messages; the OS-level confinement is the boundary."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    refused = (
        "socket.",
        "subprocess.",
        "os.fork",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.kill",
        "os.killpg",
        "pty.",
        "os.forkpty",
        "_posixsubprocess",
    )
    changes = (
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.symlink",
        "os.truncate",
        "os.utime",
        "shutil.rmtree",
        "shutil.copyfile",
        "shutil.move",
    )

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == root or real.startswith(root + os.sep) or real == "/dev/null"

    def hook(event: str, args: tuple) -> None:
        if event.startswith(refused):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None))[:3]
            writing = any(c in str(mode or "") for c in "wax+") or bool((flags or 0) & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path} outside the working directory is not allowed")
        elif event in changes:
            if any(not inside(a) for a in args if isinstance(a, (str, bytes, os.PathLike))):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    return hook


def confine_runner(state: State, work: str, limits: dict, base_size: int) -> None:
    """Everything between fork and the snippet's first line: limits first, then the irreversible walls.
    `base_size`: the address space the runner starts with (the memory limit comes on top of it)."""
    os.setsid()  # its own session and process group: kill(0, …) reaches only the snippet
    os.chdir(work)
    mem = base_size + (int(limits["memory_mb"]) << 20)
    cpu = max(1, int(limits["cpu_seconds"]))
    for which, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
    os.environ.clear()
    os.environ.update(
        {
            "PATH": "/usr/bin:/bin",
            "HOME": work,
            "TMPDIR": work,
            "MPLCONFIGDIR": work,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0",
        }
    )
    tempfile.tempdir = work
    try:
        confine.drop_capabilities()
    except OSError:
        if os.geteuid() == 0 and not state.namespaces:
            raise
    confine.no_new_privileges()
    if state.landlock:
        read = ["/"] if state.namespaces else state.read_paths + list(DEVICES)
        confine.landlock(read, [work, "/dev/null"])
    if state.seccomp:
        confine.seccomp()
    if limits.get("audit_hook", True):
        sys.addaudithook(_audit_hook(os.path.realpath(work)))


def run_snippet(state: State, work: str, request: dict, code_fd: int, out_fd: int) -> None:
    """The runner's whole life; never returns."""
    code = 1
    try:
        source = os.pread(code_fd, os.fstat(code_fd).st_size, 0).decode("utf-8", "replace")
        base_size = state.address_space()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.closerange(3, 1 << 16)
        sys.stdin = open(0, closefd=False)
        sys.stdout = sys.stderr = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
        )
        confine_runner(state, work, request, base_size)
        linecache.cache["<model code>"] = (len(source), None, source.splitlines(True), "<model code>")
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(compile(source, "<model code>", "exec"), namespace)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except BaseException as error:  # the model's bug: show it as python would
            traceback.print_exception(type(error), error, error.__traceback__.tb_next)
            code = 1
        sys.stdout.flush()
    except BaseException as error:  # a failure to confine: never run the code, say why
        try:
            os.write(2, f"sandbox: could not confine the snippet: {error!r}\n".encode())
        except OSError:
            pass
        code = 125
    os._exit(code & 0xFF)


# ---- the executor: one per snippet --------------------------------------------------------------------------


def execute(state: State, request: dict, fds: list[int]) -> None:
    """Sets up the snippet's namespaces and folder, runs it under a deadline, reports; never returns."""
    code_fd, out_fd, status_fd = fds
    status: dict = {}
    try:
        if state.namespaces:
            confine.unshare(confine.CLONE_NEWNS | confine.CLONE_NEWPID)
            confine.mount(
                "tmpfs",
                confine.WORK,
                "tmpfs",
                confine.MS_NOSUID | confine.MS_NODEV,
                f"size={int(request['disk_mb'])}m,nr_inodes=4096,mode=1777",
            )
            work = confine.WORK
        else:
            work = tempfile.mkdtemp(dir=state.runs_dir)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            run_snippet(state, work, request, code_fd, out_fd)
        os.close(out_fd)
        os.close(code_fd)
        # a tmpfs bounds the work folder under namespaces; without them, watch its size
        limit_bytes = int(request["disk_mb"]) << 20
        over_disk = None if state.namespaces else (lambda: _folder_bytes(work) > limit_bytes)
        limit = _wait(pid, float(request["timeout"]), over_disk)
        if limit is not None:
            for kill in (os.kill, os.killpg):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        _, raw, usage = os.wait4(pid, 0)
        status = {
            "returncode": os.waitstatus_to_exitcode(raw),
            "limit": limit,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "seconds": round(time.monotonic() - start, 3),
        }
        if not state.namespaces:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    except BaseException as error:
        status = {"error": repr(error)}
    try:
        os.write(status_fd, json.dumps(status).encode())
    finally:
        os._exit(0)


def _wait(pid: int, timeout: float, over_disk=None) -> str | None:
    """Waits for `pid` to end; "time" when the deadline passed first, "disk" when `over_disk()` said so first."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            step = min(remaining, 0.02) if over_disk is not None or pidfd is None else remaining
            if pidfd is not None:
                if select.select([pidfd], [], [], step)[0]:
                    return None
            elif os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return None
            else:
                time.sleep(step)
            if over_disk is not None and over_disk():
                return "disk"
        return "time"
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _folder_bytes(folder: str) -> int:
    """Bytes allocated beneath `folder` (a snippet may remove files meanwhile: those count as gone)."""
    total, stack = 0, [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total


# ---- the probe and the loop ----------------------------------------------------------------------------------

PROBE = r"""
import errno, json, os, socket
held = {}
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    held["process"] = False
except OSError:
    held["process"] = True
try:  # refused outright, or no route at all; "connection refused" would only mean no listener
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9))
    held["network"] = False
except OSError as error:
    held["network"] = error.errno in (errno.EPERM, errno.EACCES, errno.ENETUNREACH)
try:
    with open(OUTSIDE, "w") as handle:
        handle.write("escaped")
    held["filesystem"] = False
except OSError:
    held["filesystem"] = True
with open("inside.txt", "w") as handle:
    handle.write("ok")
held["work_folder"] = open("inside.txt").read() == "ok"
print(json.dumps(held))
"""


def probe(state: State) -> dict:
    """Runs PROBE through the real executor path (audit hook off) and returns what held."""
    outside = os.path.join(state.base, "outside-probe")
    code = PROBE.replace("OUTSIDE", repr(outside))
    memfd = os.memfd_create("probe")
    os.write(memfd, code.encode())
    out_r, out_w = os.pipe()
    status_r, status_w = os.pipe()
    request = {"timeout": 20, "cpu_seconds": 10, "memory_mb": 512, "file_mb": 1, "disk_mb": 4, "audit_hook": False}
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(status_r)
        execute(state, request, [memfd, out_w, status_w])
    for fd in (memfd, out_w, status_w):
        os.close(fd)
    output = _read_all(out_r).decode("utf-8", "replace")
    status = _read_all(status_r).decode()
    os.waitpid(pid, 0)
    try:
        return {**json.loads(output.strip().splitlines()[-1]), "status": json.loads(status)}
    except (ValueError, IndexError):
        return {
            "process": False,
            "network": False,
            "filesystem": False,
            "work_folder": False,
            "probe_output": output[-2000:],
            "status": status,
        }


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# Run once after the preloads: sympy imports much of itself lazily on first use and fills caches; doing it
# here spares every snippet that work (a first solve() takes ~30 ms, later ones ~6 ms).
WARMUP = """
import sympy as sp
x, y = sp.symbols("x y")
sp.solve(x**2 - 5*x + 6, x), sp.simplify(sp.sin(x)**2 + sp.cos(x)**2), sp.factor(x**3 - y**3)
sp.expand((x + y)**3), sp.integrate(x**2, (x, 0, 1)), sp.Rational(1, 3) + sp.Rational(1, 6), sp.nsimplify(0.5)
sp.N(sp.pi, 20), sp.isprime(97), sp.factorint(360), sp.sqrt(8), sp.Matrix([[1, 2], [3, 4]]).det(), sp.latex(x / y)
sp.core.cache.clear_cache()
"""


def main() -> None:
    cfg = json.loads(sys.argv[1])
    control = socket.socket(fileno=cfg["control_fd"])
    confine.die_with_parent()
    state = State(cfg)
    state.setup()
    preloaded, failed = [], []
    for name in cfg["preload"]:
        try:
            __import__(name)
            preloaded.append(name)
        except Exception as error:  # a missing optional library: snippets that need it will say so
            failed.append(f"{name}: {error}")
    if "sympy" in preloaded:
        try:
            exec(WARMUP, {})
        except Exception as error:
            failed.append(f"sympy warm-up: {error!r}")
    held = probe(state)
    checks = ("process", "network", "filesystem")
    hello = {
        "level": state.level,
        "mechanisms": state.mechanisms,
        "held": {k: held.get(k) for k in checks},
        "work_folder": held.get("work_folder"),
        "safe": all(held.get(k) for k in checks) and state.level != "none",
        "errors": state.errors,
        "preloaded": preloaded,
        "preload_failed": failed,
        "probe": held,
    }
    control.send(json.dumps(hello).encode())
    while True:
        ready, _, _ = select.select([control], [], [], 1.0)
        _reap()
        if not ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        if not message:
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            execute(state, {"audit_hook": cfg["audit_hook"], **json.loads(message)}, fds)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    main()
