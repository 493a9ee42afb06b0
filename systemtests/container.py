"""A Debian 12 root filesystem booted with systemd-nspawn, for testing the installed service.

The root filesystem is made once with debootstrap and kept as a tarball in
CACHE, named by a hash of its package list, so later runs only unpack it.
The mirror comes from the host's apt sources.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

CACHE = Path("/var/cache/edgeward-systemtest")
SUITE = "bookworm"
# Python comes with the package's dependencies too; installing it here keeps
# each run from downloading it again.
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "ca-certificates", "adduser", "procps"]
BOOT_TIMEOUT = 60.0


def host_mirror() -> str:
    """Return the URI of the host's apt source for the bookworm suite."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise RuntimeError(f"no apt source for {SUITE} in /etc/apt; cannot debootstrap")


def cached_rootfs() -> Path:
    """Return the tarball of the root filesystem, making it with debootstrap when missing."""
    key = hashlib.sha256(" ".join([SUITE, *PACKAGES]).encode()).hexdigest()[:16]
    tarball = CACHE / f"{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"build-{key}"
    shutil.rmtree(build, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(build),
            host_mirror(),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        archive.add(build, arcname=".")
    partial.rename(tarball)
    shutil.rmtree(build)
    return tarball


class Container:
    """A booted container; run() executes a command inside it with nsenter."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self._log = log.open("wb")
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self) -> None:
        self.process = subprocess.Popen(
            [
                "systemd-nspawn",
                "-D",
                str(self.root),
                "--register=no",
                "--keep-unit",
                "-q",
                "--boot",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            self.init_pid = self._find_init()
            if self.init_pid:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the container did not boot within {BOOT_TIMEOUT:.0f} s")

    def run(
        self, command: list[str], check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8",
            },
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def poweroff(self) -> None:
        if self.process is None:
            return
        if self.init_pid:
            self.run(["systemctl", "poweroff"], check=False, timeout=30)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def _find_init(self) -> int:
        assert self.process is not None
        children = _children(self.process.pid)
        for child in children:
            grandchildren = _children(child)
            if grandchildren:
                return grandchildren[0]
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(root, filter="fully_trusted")
