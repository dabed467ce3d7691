"""Hostile model code against the sandbox, at every isolation level this machine offers, with the audit hook
off so that only the operating system's walls are tested.

Every attack must fail: canary files outside stay as they were (content, mode, no new files), no TCP, UDP
or UNIX-socket peer hears anything, no process of the snippet is alive 1 s after its run returns, the test
process and the zygote survive, the snippet's failure is recorded (non-zero exit or timeout), and the
sandbox goes on serving benign code.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from mathforge.evaluate.sandbox import Sandbox

CANARY = "canary: untouched"
SECRET = "s3cret-token-8b1f"
LIBC = (
    "import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "def check(result):\n    assert result >= 0, 'refused: ' + os.strerror(ctypes.get_errno())\n    return result\n"
)

HOSTILE = {
    # files outside the work folder: write, truncate, create, rename, delete, chmod, links
    "open_truncate": "open(CANARY, 'w').write('pwned')",
    "open_append": "open(CANARY, 'a').write('pwned')",
    "os_open_truncate": "import os\nfd = os.open(CANARY, os.O_WRONLY | os.O_TRUNC)\nos.write(fd, b'pwned')",
    "os_open_create": "import os\nfd = os.open(NEW, os.O_WRONLY | os.O_CREAT, 0o644)\nos.write(fd, b'pwned')",
    "pathlib_write": "import pathlib\npathlib.Path(NEW).write_text('pwned')",
    "pathlib_unlink": "import pathlib\npathlib.Path(CANARY).unlink()",
    "shutil_copy_out": "import shutil\nopen('x', 'w').write('pwned')\nshutil.copy('x', NEW)",
    "shutil_move_in": "import shutil\nshutil.move(CANARY, 'stolen')",
    "shutil_rmtree": "import shutil\nshutil.rmtree(OUTSIDE)",
    "os_rename": "import os\nos.rename(CANARY, CANARY + '.moved')",
    "os_remove": "import os\nos.remove(CANARY)",
    "os_chmod": "import os\nos.chmod(CANARY, 0o777)",
    "os_truncate": "import os\nos.truncate(CANARY, 0)",
    "os_utime": "import os\nos.utime(CANARY, (0, 0))",
    "symlink_out": "import os\nos.symlink(CANARY, 'link')\nopen('link', 'w').write('pwned')",
    "hardlink_out": "import os\nos.link(CANARY, 'hard')\nopen('hard', 'w').write('pwned')",
    "read_secret": "print(open(SECRET_FILE).read())",
    # libc through ctypes, around any Python-level hook
    "ctypes_open": LIBC
    + "fd = libc.open(CANARY.encode(), os.O_WRONLY | os.O_TRUNC)\ncheck(fd)\nlibc.write(fd, b'pwned', 5)",
    "ctypes_create": LIBC + "check(libc.open(NEW.encode(), os.O_WRONLY | os.O_CREAT, 0o644))",
    "ctypes_unlink": LIBC + "check(libc.unlink(CANARY.encode()))",
    "ctypes_rename": LIBC + "check(libc.rename(CANARY.encode(), (CANARY + '.moved').encode()))",
    "ctypes_remount_root": LIBC + "check(libc.mount(None, b'/', None, 32, None))\nopen('/pwned', 'w')",
    "ctypes_unshare_user": LIBC + "check(libc.unshare(0x10000000))",
    "ctypes_ptrace_zygote": LIBC + "check(libc.ptrace(16, ZYGOTE, 0, 0))",
    # processes: fork, daemons that outlive the deadline, exec, subprocess, multiprocessing, bombs
    "os_fork": "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)",
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "ctypes_fork_bomb": LIBC + "while True:\n    check(libc.fork())",
    "ctypes_daemon": LIBC
    + (
        "pid = libc.fork()\ncheck(pid)\nif pid == 0:\n    libc.setsid()\n    time.sleep(2.5)\n"
        "    open(NEW, 'w').write('late')\n    os._exit(0)\ntime.sleep(30)"
    ),
    "raw_clone": LIBC + "check(libc.syscall(56 if os.uname().machine == 'x86_64' else 220, 17, 0, 0, 0, 0))",
    "subprocess": "import subprocess\nsubprocess.run(['touch', NEW], check=True)",
    "os_system": "import os\nassert os.system('touch ' + NEW) == 0",
    "os_execv": "import os\nos.execv('/bin/sh', ['sh', '-c', 'touch ' + NEW])",
    "posix_spawn": "import os\nos.posix_spawn('/usr/bin/touch', ['touch', NEW], {})",
    "multiprocessing": (
        "import multiprocessing\np = multiprocessing.Process(target=open, args=(NEW, 'w'))\np.start()\np.join()\n"
        "assert p.exitcode == 0"
    ),
    "thread_bomb": "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
    # network
    "tcp_connect": "import socket\nsocket.create_connection(('127.0.0.1', TCP_PORT), timeout=2).sendall(b'pwned')",
    "udp_send": (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'pwned', ('127.0.0.1', UDP_PORT))\n"
        "raise SystemExit('sent')"
    ),
    "unix_connect": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(UNIX_PATH)\ns.sendall(b'pwned')",
    "unix_abstract": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(ABSTRACT)\ns.sendall(b'pwned')",
    # /proc tricks
    "proc_self_root": "open('/proc/self/root' + CANARY, 'w').write('pwned')",
    "proc_parent_root": "import os\nopen(f'/proc/{os.getppid()}/root' + CANARY, 'w').write('pwned')",
    "proc_test_root": "open(f'/proc/{TEST_PID}/root' + CANARY, 'w').write('pwned')",
    "proc_test_cwd": "open(f'/proc/{TEST_PID}/cwd/pwned', 'w').write('pwned')",
    # signals to the parents
    "kill_test_process": "import os, signal\nos.kill(TEST_PID, signal.SIGKILL)",
    "kill_zygote": "import os, signal\nos.kill(ZYGOTE, signal.SIGKILL)",
    "kill_parent": "import os, signal\nos.kill(os.getppid() or ZYGOTE, signal.SIGKILL)\nraise SystemExit('sent')",
    "kill_everyone": "import os, signal\nos.kill(-1, signal.SIGKILL)",
    # memory and disk
    "memory_bomb": "x = bytearray(16 << 30)",
    "memory_growth": "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))",
    "disk_one_file": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))",
    "disk_many_files": "for i in range(100000):\n    open(f'f{i}', 'wb').write(b'0' * (4 << 20))",
}


@pytest.fixture(scope="module", params=["namespaces", "landlock"])
def sandbox(request):
    box = Sandbox(isolation=request.param, audit_hook=False)
    isolation = box.isolation
    if isolation.level != request.param:  # this machine does not offer it: nothing of that level to test
        box.close()
        pytest.skip(f"{request.param} isolation is not available here: {isolation.describe()}")
    assert isolation.safe, isolation.describe()
    yield box
    box.close()


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """A TCP listener, a UDP socket, a UNIX socket (path) and an abstract UNIX socket, all non-blocking."""
    folder = tmp_path_factory.mktemp("peers")
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(folder / "peer.sock"))
    unix.listen()
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0mathforge-test-{os.getpid()}")
    abstract.listen()
    for s in (tcp, udp, unix, abstract):
        s.setblocking(False)
    yield {"tcp": tcp, "udp": udp, "unix": unix, "abstract": abstract, "unix_path": str(folder / "peer.sock")}
    for s in (tcp, udp, unix, abstract):
        s.close()


def _heard(peers) -> list[str]:
    heard = []
    for name in ("tcp", "unix", "abstract"):
        try:
            peers[name].accept()
            heard.append(name)
        except BlockingIOError:
            pass
    try:
        peers["udp"].recv(100)
        heard.append("udp")
    except BlockingIOError:
        pass
    return heard


def _snippet_processes(box: Sandbox) -> list[int]:
    """Processes forked from the zygote (they share its command line, which names the sandbox's folder)."""
    zygote = box._process.pid
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != zygote:
            try:
                if box._base.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _render(code: str, outside: Path, peers, box: Sandbox) -> str:
    values = {
        "CANARY": repr(str(outside / "canary.txt")),
        "NEW": repr(str(outside / "new.txt")),
        "OUTSIDE": repr(str(outside)),
        "SECRET_FILE": repr(str(outside / "secret.txt")),
        "TCP_PORT": str(peers["tcp"].getsockname()[1]),
        "UDP_PORT": str(peers["udp"].getsockname()[1]),
        "UNIX_PATH": repr(peers["unix_path"]),
        "ABSTRACT": repr(f"\0mathforge-test-{os.getpid()}"),
        "TEST_PID": str(os.getpid()),
        "ZYGOTE": str(box._process.pid),
    }
    for key, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        code = code.replace(key, value)
    return code


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_code_is_contained(sandbox: Sandbox, peers, tmp_path: Path, attack: str):
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary.txt"
    canary.write_text(CANARY)
    canary.chmod(0o644)
    (outside / "secret.txt").write_text(SECRET)
    before = sorted(p.name for p in outside.iterdir())
    mtime = canary.stat().st_mtime_ns
    zygote = sandbox._process.pid
    code = _render(HOSTILE[attack], outside, peers, sandbox)

    result = sandbox.run(code, timeout=2.0, memory_mb=256, file_mb=8, disk_mb=32)
    deadline = time.monotonic() + 1.0
    while _snippet_processes(sandbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _snippet_processes(sandbox) == [], "a process of the snippet outlived it"
    if attack == "ctypes_daemon":
        time.sleep(2.0)  # the daemon, had it survived, writes 2.5 s after it started

    assert result.returncode != 0 or result.timed_out, result
    assert canary.read_text() == CANARY and (canary.stat().st_mode & 0o777) == 0o644
    assert canary.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in outside.iterdir()) == before
    assert SECRET not in result.output
    assert _heard(peers) == []
    assert sandbox._process.pid == zygote and sandbox._process.poll() is None, "the zygote died"
    assert sandbox.run("from fractions import Fraction\nprint(Fraction(1, 3) + Fraction(1, 6))").text() == "1/2"


BENIGN = {
    "import sympy as sp\nx = sp.symbols('x')\nprint(sp.solve(x**2 - 5*x + 6, x))": "[2, 3]",
    "from fractions import Fraction\nprint(sum(Fraction(1, k * (k + 1)) for k in range(1, 10)))": "9/10",
    "import math\nprint(math.comb(10, 3), math.gcd(84, 36), round(math.pi, 5))": "120 12 3.14159",
    "import itertools\nprint(sum(1 for p in itertools.permutations(range(5)) if p[0] < p[-1]))": "60",
    "import numpy as np\nprint(int(np.linalg.det(np.array([[2, 1], [1, 3]])).round()))": "5",
    "import sympy\nprint(sympy.factorint(360), sympy.isprime(2**31 - 1))": "{2: 3, 3: 2, 5: 1} True",
    "import tempfile\nwith tempfile.NamedTemporaryFile('w+') as f:\n    f.write('42'); f.seek(0); print(f.read())": "42",
    "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(7 * 6))\nt.start(); t.join()\nprint(out[0])": "42",
}


@pytest.mark.parametrize("code", sorted(BENIGN))
def test_benign_numeric_code_prints_the_right_output(sandbox: Sandbox, code: str):
    result = sandbox.run(code, timeout=20)
    assert result.returncode == 0 and result.text() == BENIGN[code], result


def test_disk_bomb_is_bounded_and_the_next_snippet_has_a_fresh_folder(sandbox: Sandbox):
    bomb = sandbox.run("for i in range(1000):\n    open(f'f{i}', 'wb').write(b'0' * (4 << 20))", timeout=10, disk_mb=16)
    assert bomb.returncode != 0 and not bomb.timed_out, bomb  # stopped by the disk limit, not the deadline
    assert sandbox.run("import os\nprint(os.listdir('.'))").text() == "[]"


def test_output_flood_keeps_head_and_tail(sandbox: Sandbox):
    result = sandbox.run(
        "print('first')\nfor i in range(200000):\n    print('x' * 50)\nprint('last')", timeout=20, max_output=1000
    )
    assert result.returncode == 0, result
    assert result.output.startswith("first") and result.output.rstrip().endswith("last")
    assert len(result.output) < 1100
