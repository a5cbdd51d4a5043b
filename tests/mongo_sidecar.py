"""The test suite's MongoDB server: runs SecantusDB's ``secantusd-py`` and ties its life to the tests'.

Usage: ``python tests/mongo_sidecar.py PATH/TO/secantusd-py``. Run by the project's Python; SecantusDB
itself (GPL-2.0, its own virtualenv made by ``.ci/install-secantus``) is only ever started as a separate
executable and reached over the wire — nothing here imports it.

Starts the server on a free port of 127.0.0.1 (``--port 0``), in memory (WiredTiger ``in_memory``), with
the test commands (``configureFailPoint``) enabled and an explicit empty configuration file (no
``secantusd.toml`` is picked up from the working or home directory), then prints one line, the connection
URI (``mongodb://127.0.0.1:PORT/?replicaSet=secantus``: a single-node replica set, as in production).
Serves until its stdin closes (the test process that started it ended, however it ended) or it receives
SIGTERM/SIGINT; then stops the server and removes its temporary directory.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPLICA_SET = "secantus"
START_TIMEOUT = 30.0
_LISTENING = re.compile(rb"secantus listening on ([0-9.]+):(\d+)")


def _log_tail(log: Path) -> str:
    return log.read_bytes()[-3000:].decode(errors="replace") if log.exists() else ""


def _wait_listening(proc: subprocess.Popen, log: Path) -> tuple[str, int]:
    """The address from the server's "listening on" log line, or SystemExit if it dies or times out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if match := _LISTENING.search(log.read_bytes()):
            return match.group(1).decode(), int(match.group(2))
        if proc.poll() is not None:
            sys.exit(f"secantusd-py exited with {proc.returncode}:\n{_log_tail(log)}")
        time.sleep(0.05)
    sys.exit(f"secantusd-py did not listen within {START_TIMEOUT:.0f} s:\n{_log_tail(log)}")


def _serve_until_stdin_closes(proc: subprocess.Popen, log: Path) -> None:
    if sys.stdin is None or sys.stdin.isatty():
        proc.wait()
        return
    with selectors.DefaultSelector() as sel:
        sel.register(sys.stdin, selectors.EVENT_READ)
        while proc.poll() is None:
            if sel.select(1.0) and not sys.stdin.buffer.read1(4096):
                return  # EOF: the test process is gone or done
    sys.exit(f"secantusd-py exited with {proc.returncode} while serving:\n{_log_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # secantusd-py stops cleanly on SIGTERM
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: mongo_sidecar.py PATH/TO/secantusd-py")
    secantusd = sys.argv[1]
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    home = Path(tempfile.mkdtemp(prefix="fhir-server-secantus-"))
    try:
        config = home / "secantusd.toml"
        config.write_text("")
        log = home / "secantusd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    secantusd,
                    *("--config", str(config)),
                    *("--host", "127.0.0.1", "--port", "0"),
                    *("--storage-path", ":memory:"),
                    "--enable-test-commands",
                    *("--log-level", "INFO"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=home,
                env={**os.environ, "TMPDIR": str(home)},  # its in-memory engine's scratch dir
            )
        try:
            host, port = _wait_listening(proc, log)
            print(f"mongodb://{host}:{port}/?replicaSet={REPLICA_SET}", flush=True)
            _serve_until_stdin_closes(proc, log)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
