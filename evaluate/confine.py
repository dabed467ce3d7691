"""Linux confinement primitives for the code sandbox: namespaces and a minimal read-only root, Landlock,
a seccomp filter, dropping capabilities. Standard library only (ctypes), because the sandbox's zygote
process imports this file by path, before anything of mathforge is importable there.

Each function either does what it says or raises OSError; `sandbox_zygote.py` decides what to try.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x20000000, 0x40000000, 0x00010000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
WORK = "/snippet"  # in the new root: each snippet's own tmpfs is mounted here
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT = 1, 24, 38, 22, 47

# Syscall numbers per architecture (x86_64's own table; aarch64 uses the generic one) and the audit arch.
_ARCH = {
    "x86_64": {
        "audit": 0xC000003E,
        "pivot_root": 155,
        "clone": 56,
        "clone3": 435,
        "signal": {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
        "denied": {
            "socket": 41,
            "fork": 57,
            "vfork": 58,
            "execve": 59,
            "execveat": 322,
            "ptrace": 101,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "unshare": 272,
            "setns": 308,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "reboot": 169,
            "swapon": 167,
            "swapoff": 168,
            "acct": 163,
            "personality": 135,
            "iopl": 172,
            "ioperm": 173,
            "name_to_handle_at": 303,
            "open_by_handle_at": 304,
            # metadata of files (Landlock does not cover it): modes, owners, times, extended attributes
            "chmod": 90,
            "fchmod": 91,
            "fchmodat": 268,
            "chown": 92,
            "fchown": 93,
            "lchown": 94,
            "fchownat": 260,
            "utime": 132,
            "utimes": 235,
            "futimesat": 261,
            "utimensat": 280,
            "setxattr": 188,
            "lsetxattr": 189,
            "fsetxattr": 190,
            "removexattr": 197,
            "lremovexattr": 198,
            "fremovexattr": 199,
            "truncate": 76,
        },
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "pivot_root": 41,
        "clone": 220,
        "clone3": 435,
        "signal": {"kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240},
        "denied": {
            "socket": 198,
            "execve": 221,
            "execveat": 281,
            "ptrace": 117,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "unshare": 97,
            "setns": 268,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "reboot": 142,
            "swapon": 224,
            "swapoff": 225,
            "acct": 89,
            "personality": 92,
            "name_to_handle_at": 264,
            "open_by_handle_at": 265,
            "fchmod": 52,
            "fchmodat": 53,
            "fchownat": 54,
            "fchown": 55,
            "utimensat": 88,
            "setxattr": 5,
            "lsetxattr": 6,
            "fsetxattr": 7,
            "removexattr": 14,
            "lremovexattr": 15,
            "fremovexattr": 16,
            "truncate": 45,
        },
    },
}
# The same number on every architecture (the unified table of newer syscalls).
_COMMON_DENIED = {
    "pidfd_send_signal": 424,
    "pidfd_open": 434,
    "pidfd_getfd": 438,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "fchmodat2": 452,
    "setxattrat": 463,
    "removexattrat": 466,
}
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def arch() -> dict | None:
    """The syscall table for this machine, or None where the seccomp filter is not written for it."""
    return _ARCH.get(platform.machine())


def prctl(option: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> int:
    return _check(_libc.prctl(option, a, b, c, d), f"prctl({option})")


def die_with_parent() -> None:
    prctl(PR_SET_PDEATHSIG, 9)


# ---- namespaces and the minimal root ---------------------------------------------------------------------


def enter_namespaces() -> None:
    """New user, mount, network, IPC and UTS namespaces; this process is root inside, its own uid outside.

    The new network namespace has only a loopback device, and it is down: nothing can be reached."""
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _locked_flags(path: str) -> int:
    """Mount flags of `path` that a bind remount inside a user namespace must keep (or it gets EPERM)."""
    have = os.statvfs(path).f_flag
    pairs = (
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME),
    )
    return sum(ms for st, ms in pairs if have & st)


def bind(source: str, target: str, *, writable: bool = False) -> None:
    """Bind-mounts `source` (file or folder) at `target` under the new root, read-only unless `writable`."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | _locked_flags(source) | (0 if writable else MS_RDONLY)
    mount(None, target, None, flags)


def _outermost(paths: list[str]) -> list[str]:
    """Existing absolute paths with those inside another one of the list removed, in sorted order."""
    out: list[str] = []
    for path in sorted({os.path.abspath(p) for p in paths if p and os.path.exists(p)}):
        if not any(path == o or path.startswith(o.rstrip("/") + "/") for o in out):
            out.append(path)
    return out


def build_root(new_root: str, read_only: list[str], devices: tuple[str, ...]) -> None:
    """Makes `new_root` (a fresh tmpfs) hold only `read_only` paths (bound read-only), the `devices`, an empty
    WORK folder (each run mounts its own tmpfs there) with /tmp pointing to it, and pivots into it.

    A top-level path that is a symbolic link (/lib -> usr/lib on merged-/usr systems) becomes the same link."""
    os.makedirs(new_root, exist_ok=True)
    mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    for path in _outermost(read_only):
        top = "/" + path.strip("/").split("/")[0]
        if os.path.islink(top):
            if not os.path.lexists(new_root + top):
                os.symlink(os.readlink(top), new_root + top)
            continue
        bind(path, new_root + path)
    for device in devices:
        if os.path.exists(device):
            bind(device, new_root + device, writable=device == "/dev/null")
    os.mkdir(new_root + WORK, 0o755)  # FileExistsError (an OSError) if a bound path already took the name
    if not os.path.lexists(new_root + "/tmp"):
        os.symlink(WORK.lstrip("/"), new_root + "/tmp")
    os.chdir(new_root)
    os.mkdir(".oldroot")
    table = arch()
    if table is None:
        raise OSError(errno.ENOSYS, f"pivot_root: no syscall table for {platform.machine()}")
    _check(_libc.syscall(table["pivot_root"], b".", b".oldroot"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.oldroot", MNT_DETACH), "umount old root")
    os.rmdir("/.oldroot")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ---- capabilities, Landlock, seccomp -----------------------------------------------------------------------


def drop_capabilities() -> None:
    """Empties the bounding, ambient, permitted, effective and inheritable capability sets."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == errno.EINVAL:
                break
            _check(-1, "drop bounding capability")
    _libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL (absent on old kernels: fine)
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two empty {effective, permitted, inheritable} sets
    _check(_libc.capset(header, data), "capset")


def no_new_privileges() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel (0: not available)."""
    result = _libc.syscall(_LANDLOCK_CREATE, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    return max(int(result), 0)


_FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # EXECUTE, READ_FILE, READ_DIR
_FILE_ONLY = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # rights that may be granted on a file


def _fs_handled(abi: int) -> int:
    bits = (1 << 13) - 1  # EXECUTE … MAKE_SYM (ABI 1)
    for version, bit in ((2, 13), (3, 14), (5, 15)):  # REFER, TRUNCATE, IOCTL_DEV
        if abi >= version:
            bits |= 1 << bit
    return bits


def landlock(read: list[str], write: list[str]) -> int:
    """Restricts this process (and what it starts) to reading beneath `read` and writing beneath `write`; with
    ABI >= 4 no TCP bind or connect, with ABI >= 6 no signals or abstract UNIX sockets out of its domain.
    Needs no_new_privileges (or CAP_SYS_ADMIN) first. Returns the ABI version used."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available in this kernel")
    handled = _fs_handled(abi)
    attr = struct.pack("Q", handled)
    if abi >= 4:
        attr += struct.pack("Q", 0b11)  # BIND_TCP | CONNECT_TCP
    if abi >= 6:
        attr += struct.pack("Q", 0b11)  # scoped: ABSTRACT_UNIX_SOCKET | SIGNAL
    ruleset = _check(_libc.syscall(_LANDLOCK_CREATE, attr, len(attr), 0), "landlock_create_ruleset")
    try:
        rules = [(p, _FS_READ) for p in _outermost(read)] + [(p, handled) for p in _outermost(write)]
        for path, access in rules:
            allowed = access & (_FILE_ONLY if not os.path.isdir(path) else handled)
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", allowed & handled, fd)
                _check(_libc.syscall(_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0), f"landlock rule {path}")
            finally:
                os.close(fd)
        _check(_libc.syscall(_LANDLOCK_RESTRICT, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _seccomp_program(table: dict, own_pid: int) -> bytes:
    """A classic-BPF seccomp filter: EPERM for process creation, exec, sockets, namespaces, mounts, ptrace,
    kernel modules, io_uring, file metadata changes (chmod, chown, times, xattrs), truncate by path (Landlock
    covers it only from ABI 3; ftruncate of a file opened for writing stays allowed) and the like; threads (clone with CLONE_THREAD) allowed; clone3 answered ENOSYS
    so libc falls back to clone; signals only to this process; any other architecture killed."""
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    program: list[tuple[int, object, object, int]] = [
        (LD, 0, 0, 4),
        (JEQ, 1, 0, table["audit"]),
        (RET, 0, 0, kill),
        (LD, 0, 0, 0),
    ]
    if table["audit"] == 0xC000003E:
        program.append((JGE, "deny", 0, 0x40000000))  # the x32 ABI's numbers
    for number in sorted({*table["denied"].values(), *_COMMON_DENIED.values()}):
        program.append((JEQ, "deny", 0, number))
    program.append((JEQ, "nosys", 0, table["clone3"]))
    # each block below ends in a jump to allow/deny, so a non-matching number skips it with A still = nr
    program += [(JEQ, 0, 2, table["clone"]), (LD, 0, 0, 16), (JSET, "allow", "deny", CLONE_THREAD)]
    for number in table["signal"].values():  # first argument: the target pid (or tgid/tid)
        program += [(JEQ, 0, 3, number), (LD, 0, 0, 16), (JEQ, "allow", 0, own_pid), (JEQ, "allow", "deny", 0)]
    labels = {"allow": len(program), "deny": len(program) + 1, "nosys": len(program) + 2}
    program += [(RET, 0, 0, allow), (RET, 0, 0, eperm), (RET, 0, 0, enosys)]
    out = b""
    for index, (code, jt, jf, k) in enumerate(program):
        jt = labels[jt] - index - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - index - 1 if isinstance(jf, str) else jf
        out += struct.pack("HBBI", code, jt, jf, k)
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp() -> None:
    """Installs the filter of `_seccomp_program` on this (single-threaded) process. Needs no_new_privileges."""
    table = arch()
    if table is None:
        raise OSError(errno.ENOSYS, f"seccomp: no syscall table for {platform.machine()}")
    code = _seccomp_program(table, os.getpid())
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(prog), 0, 0), "seccomp")
