"""Fixtures for the system tests: the .deb, a booted Debian 12 container, and a broker on the host."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from container import Container, cached_rootfs, unpack  # noqa: E402

# The unit tests' mosquitto fixture, loaded under another name than this conftest's.
_spec = importlib.util.spec_from_file_location("unit_conftest", REPO / "tests" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_unit_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_unit_conftest)
Broker = _unit_conftest.Broker


def built_deb() -> Path:
    debs = sorted((REPO / "dist").glob("edgeward_*.deb"))
    if not debs:
        pytest.fail("no dist/edgeward_*.deb; run 'make deb' first (make test-system does)")
    return debs[-1]


def newer_deb(deb: Path, folder: Path) -> Path:
    """Repack the package with a higher version, to test an upgrade without a second build."""
    tree = folder / "newer"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    version = next(line.split(": ", 1)[1] for line in lines if line.startswith("Version: "))
    control.write_text(
        "\n".join(
            f"Version: {version}+upgrade1" if line.startswith("Version: ") else line
            for line in lines
        )
        + "\n"
    )
    target = folder / f"edgeward_{version}+upgrade1.deb"
    subprocess.run(
        ["dpkg-deb", "-b", str(tree), str(target)], check=True, stdout=subprocess.DEVNULL
    )
    return target


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    folder = tmp_path_factory.mktemp("broker")
    instance = Broker(folder)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def box(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Container]:
    if shutil.which("systemd-nspawn") is None or shutil.which("debootstrap") is None:
        pytest.fail("systemd-nspawn and debootstrap are missing; run 'make test-system' as root")
    folder = tmp_path_factory.mktemp("container")
    root = folder / "root"
    unpack(cached_rootfs(), root)
    deb = built_deb()
    shutil.copy(deb, root / "root" / "edgeward.deb")
    shutil.copy(newer_deb(deb, folder), root / "root" / "edgeward-newer.deb")
    container = Container(root, folder / "boot.log")
    container.boot()
    try:
        yield container
    finally:
        container.poweroff()
