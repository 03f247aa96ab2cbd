"""Run a command under the seccomp part of systemd/explaincam.service, without systemd.

    python -m tests.service.sandbox systemd/explaincam.service -- explaincam run -c config.yaml

reads the unit and, with libseccomp (through ctypes), installs what systemd would for
``MemoryDenyWriteExecute=``, ``RestrictAddressFamilies=``, ``SystemCallFilter=`` (groups
expanded by ``systemd-analyze syscall-filter``) and ``SystemCallErrorNumber=``, sets its
``Environment=``, then executes the command, which keeps the filters.

Not reproduced: the user, mount namespaces (ProtectSystem=, PrivateTmp=, ...) and the
device cgroup; those are systemd's own and are judged by ``systemd-analyze``. What this
answers is whether Python, numpy, OpenCV, LiteRT, paho and TensorFlow run with the
system calls and memory protections the unit leaves them.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
AF_MAX = 46
# systemd allows these to every allow-listed service (systemd.exec(5), SystemCallFilter=).
IMPLICIT = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def unit_directives(path: str | Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@functools.lru_cache(maxsize=None)
def expand(name: str) -> frozenset[str]:
    """The system calls of a name: itself, or every member of an @group (recursively)."""
    if not name.startswith("@"):
        return frozenset({name})
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                         check=True, capture_output=True, text=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= expand(item)
    return frozenset(names)


def allowed_syscalls(filters: list[str]) -> set[str]:
    """The allow-list that a sequence of SystemCallFilter= values makes (first one an allow-list)."""
    allowed: set[str] | None = None
    for value in filters:
        if not value:
            allowed = None
            continue
        deny = value.startswith("~")
        names = set().union(*(expand(item.split(":")[0]) for item in value.lstrip("~").split()))
        if allowed is None:
            if deny:
                raise ValueError("only allow-list filters are reproduced")
            allowed = names | expand("@default") | IMPLICIT
        elif deny:
            allowed -= names
        else:
            allowed |= names
    return allowed or set()


def _load(lib: ctypes.CDLL, default_action: int, rules: list[tuple[int, str, list[_ArgCmp]]]) -> None:
    ctx = lib.seccomp_init(default_action)
    try:
        for action, name, conditions in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a system call on this architecture
            array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array)
            if rc != 0:
                raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def apply_unit_sandbox(unit: str | Path) -> None:
    """Install the unit's seccomp filters on this process (and everything it executes)."""
    d = unit_directives(unit)
    lib = _libseccomp()
    eperm = 0x00050000 | errno.EPERM
    # Like systemd: W^X and address families first, the allow-list (which forbids seccomp()) last.
    extra: list[tuple[int, str, list[_ArgCmp]]] = []
    if d.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        extra += [(eperm, "mmap", [_ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC)]),
                  (eperm, "mprotect", [_ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                  (eperm, "pkey_mprotect", [_ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                  (eperm, "shmat", [_ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)])]
    if "RestrictAddressFamilies" in d:
        families = {getattr(socket, name) for name in d["RestrictAddressFamilies"][-1].split()}
        extra += [(0x00050000 | errno.EAFNOSUPPORT, "socket", [_ArgCmp(0, SCMP_CMP_EQ, family, 0)])
                  for family in range(AF_MAX) if family not in families]
    if extra:
        _load(lib, SCMP_ACT_ALLOW, extra)
    if "SystemCallFilter" in d:
        error = d.get("SystemCallErrorNumber", ["kill"])[-1]
        default = SCMP_ACT_KILL_PROCESS if error in ("", "kill") else 0x00050000 | getattr(errno, error)
        _load(lib, default, [(SCMP_ACT_ALLOW, name, []) for name in sorted(allowed_syscalls(d["SystemCallFilter"]))])
    for line in d.get("Environment", []):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            os.environ[key] = value


def main(argv: list[str]) -> None:
    """``UNIT -- COMMAND...``: apply the unit's filters, then execute the command."""
    unit, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: python -m tests.service.sandbox UNIT -- COMMAND [ARG...]")
    apply_unit_sandbox(unit)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
