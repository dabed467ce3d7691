"""Runs model-written Python in a separate, limited process (tool-integrated evaluation).

Each run gets a fresh interpreter (`python -I`) in a throwaway temporary directory with
- CPU-time, address-space, file-size and open-file limits (`resource.setrlimit`, set inside the
  child before the code runs, so this is safe to call from threads),
- a wall-clock limit: the whole process group is killed when it passes,
- audit hooks (PEP 578) that refuse sockets, new processes (fork, exec, subprocess, os.system)
  and file writes or deletions outside the temporary directory,
- a network namespace of its own when `unshare -rn` is available (Linux), as a second wall.
Audit hooks stop ordinary Python; code using ctypes could step around them (ctypes stays allowed
because numpy and sympy need it to import), which is why the OS-level limits are there too.
Output (stdout then stderr) is truncated to `max_output` characters.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache

_PRELUDE = r"""
import os, resource, sys
cpu, mem, fsize = {cpu}, {mem}, {fsize}
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
_root = os.path.realpath(os.getcwd())
_code = sys.stdin.read()

def _inside(path):
    try:
        path = os.fsdecode(path) if not isinstance(path, int) else None
    except TypeError:
        return False
    return path is None or os.path.realpath(path).startswith(_root + os.sep) or os.path.realpath(path) == _root

def _guard(event, args):
    if event.startswith(("socket.", "subprocess.", "os.fork", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                         "os.kill", "os.killpg", "pty.", "os.forkpty", "_posixsubprocess")):
        raise PermissionError(f"sandbox: {{event}} is not allowed")
    if event == "open":
        path, mode = args[0], args[1] or "r"
        if any(c in str(mode) for c in "wax+") and not _inside(path):
            raise PermissionError(f"sandbox: writing {{path}} outside the working directory is not allowed")
    elif event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"):
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if any(not _inside(p) for p in paths):
            raise PermissionError(f"sandbox: {{event}} outside the working directory is not allowed")

sys.addaudithook(_guard)
del _guard
_globals = {{"__name__": "__main__"}}
exec(compile(_code, "<model code>", "exec"), _globals)
"""


@dataclass(frozen=True)
class RunResult:
    output: str
    returncode: int | None
    timed_out: bool

    def text(self) -> str:
        """What the model sees: the output, or a short note on timeouts and silent failures."""
        if self.timed_out:
            return (self.output + "\nTimeoutError: the code ran too long").strip()
        return (
            self.output.strip()
            if self.output.strip()
            else ("" if self.returncode == 0 else f"(exit code {self.returncode})")
        )


@cache
def _unshare_prefix() -> tuple[str, ...]:
    """`unshare -rn` when it works here (a private network namespace), else nothing."""
    tool = shutil.which("unshare")
    if not tool or not sys.platform.startswith("linux"):
        return ()
    try:
        ok = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (tool, "-rn") if ok else ()


def run_python(
    code: str, *, timeout: float = 10.0, cpu_seconds: int = 10, memory_mb: int = 1024, max_output: int = 4000,
    file_mb: int = 16,
) -> RunResult:  # fmt: skip
    """Runs `code` in a limited child process and returns its (truncated) output; never raises for bad code."""
    prelude = _PRELUDE.format(cpu=int(cpu_seconds), mem=int(memory_mb) << 20, fsize=int(file_mb) << 20)
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "HOME": "/nonexistent"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mathforge-tool-") as workdir:
        env["TMPDIR"] = workdir
        command = [*_unshare_prefix(), sys.executable, "-I", "-c", prelude]
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = process.communicate(code.encode("utf-8", "replace"), timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            out, _ = process.communicate()
            timed_out = True
        finally:
            _kill_group(process)
    text = out.decode("utf-8", "replace")
    if len(text) > max_output:
        text = text[: max_output // 2] + "\n...\n" + text[-max_output // 2 :]
    return RunResult(text, process.returncode, timed_out)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
