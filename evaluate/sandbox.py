"""Runs model-written Python isolated by the operating system (tool-integrated evaluation and synthesis).

Model output is untrusted input. A `Sandbox` starts one zygote process (`sandbox_zygote.py`) that confines
itself once — user, mount, network, IPC and UTS namespaces with a read-only root holding only the system
and Python folders; or, where namespaces are not allowed, Landlock — preloads math, fractions, sympy and
numpy, and then forks one runner per snippet: its own PID namespace and tmpfs work folder, rlimits (address
space, CPU, file size, open files), no capabilities, no_new_privs, a seccomp filter (no new processes,
no exec, no sockets, no mounts or namespaces, no ptrace, signals only to itself) and, as a first line of
defence only, an audit hook. At the deadline the runner is SIGKILLed, and with it its PID namespace.

On start the zygote runs a probe through the same path (fork, connect, write outside) and reports what
held; `Sandbox.isolation` carries that. `isolation.safe` is False when any wall is missing: callers
that execute model code refuse to run then unless told it is fine (`--unsafe-sandbox`).

    with Sandbox() as sandbox:
        sandbox.run("import sympy\\nprint(sympy.factorint(360))").text()   # '{2: 3, 3: 2, 5: 1}'
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mathforge.errors import ConfigError, MathforgeError

ISOLATION_LEVELS = ("auto", "namespaces", "landlock", "none")
DEFAULT_PRELOAD = (
    "math",
    "cmath",
    "fractions",
    "decimal",
    "itertools",
    "functools",
    "collections",
    "statistics",
    "random",
    "re",
    "numpy",
    "sympy",
)
_ZYGOTE = Path(__file__).with_name("sandbox_zygote.py")
_STARTUP_SECONDS = 120.0  # preloading sympy and numpy on a busy 2-core machine


class SandboxError(MathforgeError):
    """The sandbox could not be started, or is not safe enough for what was asked."""


@dataclass(frozen=True)
class Isolation:
    """What confines snippets on this machine, as the zygote's own probe found it."""

    level: str  # "namespaces", "landlock" or "none"
    safe: bool  # the probe could not create a process, reach the network or write outside its folder
    mechanisms: tuple[str, ...] = ()
    held: dict[str, bool] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "safe": self.safe,
            "mechanisms": list(self.mechanisms),
            "held": self.held,
            "errors": list(self.errors),
        }

    def describe(self) -> str:
        walls = ", ".join(self.mechanisms)
        if self.safe:
            return f"{self.level}: {walls}"
        failed = ", ".join(k for k, v in self.held.items() if not v) or "none"
        return f"{self.level} (NOT SAFE: {failed} not contained): {walls}; {'; '.join(self.errors)}"


@dataclass(frozen=True)
class RunResult:
    output: str
    returncode: int | None
    timed_out: bool
    limit: str | None = None  # the limit that stopped it: "time", "cpu", "disk" or None
    seconds: float = 0.0

    def text(self) -> str:
        """What the model sees: the output, or a short note on timeouts, limits and silent failures."""
        note = _LIMIT_NOTES.get(self.limit or ("time" if self.timed_out else ""))
        if note:
            return (self.output + "\n" + note).strip()
        if self.output.strip():
            return self.output.strip()
        return "" if self.returncode == 0 else f"(exit code {self.returncode})"


_LIMIT_NOTES = {
    "time": "TimeoutError: the code ran too long",
    "cpu": "TimeoutError: the code used up its CPU time",
    "disk": "OSError: the code wrote more than its work folder may hold",
}


class Sandbox:
    """A zygote that runs snippets confined; thread-safe, many snippets at a time. Close it (or use `with`)."""

    def __init__(
        self, *, isolation: str = "auto", preload: tuple[str, ...] = DEFAULT_PRELOAD, audit_hook: bool = True
    ) -> None:
        if not sys.platform.startswith("linux"):
            raise SandboxError(f"the code sandbox needs Linux (namespaces, Landlock, seccomp); this is {sys.platform}")
        if isolation not in ISOLATION_LEVELS:
            raise ConfigError(
                f"sandbox isolation {isolation!r} is unknown; allowed values: {', '.join(ISOLATION_LEVELS)}"
            )
        self._settings = {"isolation": isolation, "preload": list(preload), "audit_hook": audit_hook}
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._base: str | None = None
        self._isolation: Isolation | None = None

    # -- life cycle --------------------------------------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        """Starts the zygote if needed and returns what its probe found."""
        with self._lock:
            self._ensure_started()
            assert self._isolation is not None
            return self._isolation

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._shutdown()
        base = tempfile.mkdtemp(prefix="mathforge-sandbox-")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONHASHSEED": "0",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
            "HOME": base,
            "TMPDIR": base,
        }
        log = open(os.path.join(base, "zygote.log"), "wb")
        config = json.dumps({**self._settings, "base": base, "control_fd": child.fileno()})
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", str(_ZYGOTE), config],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                pass_fds=(child.fileno(),),
                start_new_session=True,
                cwd=base,
            )
        finally:
            child.close()
            log.close()
        self._process, self._control, self._base = process, parent, base
        ready, _, _ = select.select([parent], [], [], _STARTUP_SECONDS)
        hello = parent.recv(1 << 16) if ready else b""
        if not hello:
            detail = Path(base, "zygote.log").read_text(errors="replace")[-2000:]
            self._shutdown()
            raise SandboxError(f"the sandbox process did not start: {detail.strip() or 'no output'}")
        info = json.loads(hello)
        escaped = os.path.exists(os.path.join(base, "outside-probe"))
        held = {**info["held"], "filesystem": bool(info["held"].get("filesystem")) and not escaped}
        self._isolation = Isolation(
            info["level"],
            bool(info["safe"]) and not escaped,
            tuple(info["mechanisms"]),
            held,
            tuple(info["errors"] + info["preload_failed"]),
        )
        if os.path.isdir(os.path.join(base, "root")):  # the new root's mount point, empty outside the zygote
            os.rmdir(os.path.join(base, "root"))

    def _shutdown(self) -> None:
        if self._control is not None:
            self._control.close()
        if self._process is not None:
            try:
                os.killpg(self._process.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self._process.wait()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
        self._process = self._control = self._base = None

    def close(self) -> None:
        with self._lock:
            self._shutdown()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------------------------------

    def run(
        self,
        code: str,
        *,
        timeout: float = 10.0,
        cpu_seconds: float | None = None,
        memory_mb: int = 1024,
        file_mb: int = 16,
        disk_mb: int = 64,
        max_output: int = 4000,
    ) -> RunResult:
        """Runs `code` confined and returns its output (stdout and stderr interleaved, the middle cut beyond
        `max_output` characters); never raises for bad or hostile code. `memory_mb` is on top of what the
        preloaded libraries take; `disk_mb` bounds the work folder, `file_mb` any one file."""
        if timeout <= 0 or memory_mb <= 0 or file_mb <= 0 or disk_mb <= 0 or max_output <= 0:
            raise ConfigError("sandbox limits (timeout, memory_mb, file_mb, disk_mb, max_output) must be positive")
        request = {
            "timeout": float(timeout),
            "cpu_seconds": cpu_seconds or max(1.0, timeout),
            "memory_mb": memory_mb,
            "file_mb": file_mb,
            "disk_mb": disk_mb,
        }
        memfd = os.memfd_create("snippet", os.MFD_CLOEXEC)
        os.write(memfd, code.encode("utf-8", "surrogatepass"))
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                for attempt in (1, 2):  # a zygote that died (killed from outside, out of memory) is restarted once
                    self._ensure_started()
                    assert self._control is not None
                    try:
                        socket.send_fds(self._control, [json.dumps(request).encode()], [memfd, out_w, status_w])
                        break
                    except OSError as error:
                        self._shutdown()
                        if attempt == 2:
                            for fd in (out_r, status_r):
                                os.close(fd)
                            raise SandboxError(f"the sandbox process does not take snippets: {error}") from None
        finally:
            for fd in (memfd, out_w, status_w):
                os.close(fd)
        output, status = _collect(out_r, status_r, time.monotonic() + timeout + 30.0, max_output)
        if "returncode" not in status:
            why = status.get("error", "no report within the deadline")
            return RunResult((output + f"\nSandboxError: {why}").strip(), None, True, "time")
        limit = status["limit"]
        if limit is None and status["returncode"] == -9 and status["cpu_seconds"] >= request["cpu_seconds"] - 0.1:
            limit = "cpu"
        return RunResult(output, status["returncode"], limit == "time", limit, status["seconds"])


def _collect(out_r: int, status_r: int, deadline: float, max_output: int) -> tuple[str, dict[str, Any]]:
    """Reads the output (keeping its head and tail) and the status until both pipes close or the deadline."""
    head, tail, total, status = bytearray(), bytearray(), 0, bytearray()
    keep = 4 * max_output  # bytes; a UTF-8 character is at most 4
    poller = select.poll()
    open_fds = {out_r, status_r}
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    try:
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, _ in poller.poll(remaining * 1000):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                elif fd == status_r:
                    status += chunk
                else:
                    total += len(chunk)
                    room = keep - len(head)
                    head += chunk[:room] if room > 0 else b""
                    if total > keep:
                        tail = (tail + chunk)[-keep:]
    finally:
        os.close(out_r)
        os.close(status_r)
    text = head.decode("utf-8", "replace")
    if total > keep:
        text = text[: max_output // 2] + "\n...\n" + tail.decode("utf-8", "replace")[-(max_output // 2) :]
    elif len(text) > max_output:
        text = text[: max_output // 2] + "\n...\n" + text[-(max_output // 2) :]
    try:
        parsed = json.loads(status) if status else {}
    except ValueError:
        parsed = {"error": f"unreadable status {bytes(status[:200])!r}"}
    return text, parsed


@cache
def default_sandbox() -> Sandbox:
    """One sandbox per process for `run_python`, closed at exit."""
    sandbox = Sandbox()
    atexit.register(sandbox.close)
    return sandbox


def run_python(code: str, **limits: Any) -> RunResult:
    """Runs `code` in the process's default `Sandbox` (see `Sandbox.run` for the limits)."""
    return default_sandbox().run(code, **limits)


def require_safe(sandbox: Sandbox, unsafe_ok: bool) -> Isolation:
    """The sandbox's isolation; a SandboxError naming what is missing when it is not safe and not allowed."""
    isolation = sandbox.isolation
    if not isolation.safe and not unsafe_ok:
        raise SandboxError(
            "refusing to run model-written code: this machine's sandbox is not safe "
            f"({isolation.describe()}). Allow unprivileged user namespaces or run on a kernel with Landlock; "
            "or pass --unsafe-sandbox to run it anyway, with only the limits that hold."
        )
    return isolation
