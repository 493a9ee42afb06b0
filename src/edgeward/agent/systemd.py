"""systemd integration: sd_notify and journal logging, optional at import.

With systemd-python installed its functions are used. Without it, notify
messages are sent to $NOTIFY_SOCKET directly (the protocol is one datagram
of "KEY=VALUE" lines), so the daemon also runs as Type=notify without it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

try:
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:
    _sd_daemon = None
    _sd_journal = None

log = logging.getLogger(__name__)


def notify(state: str) -> None:
    """Send a state such as "READY=1" or "WATCHDOG=1" to systemd; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if _sd_daemon is not None:
        _sd_daemon.notify(state)
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as error:
            log.warning("sd_notify %s to %s failed: %s", state, address, error)


def watchdog_interval() -> float | None:
    """Return how often to ping the watchdog (half of WATCHDOG_USEC), or None when it is off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


def setup_logging(level: int = logging.INFO) -> None:
    """Log to the journal under systemd (JOURNAL_STREAM is set), else to stderr."""
    root = logging.getLogger()
    root.setLevel(level)
    for old in list(root.handlers):
        root.removeHandler(old)

    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") and _sd_journal is not None:
        handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER="edgeward")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
