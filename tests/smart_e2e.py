"""Helpers for end-to-end SMART App Launch tests with real clients (not a test module).

- ``require_browser_tooling()``: skip (locally) or fail (under CI) when headless chromium, node or
  tests/js/node_modules is missing; ``bash .ci/install-browser`` installs them.
- ``serve_app()``: a static server on loopback for the tiny SMART app in tests/js/app (launch.html,
  index.html) and SMART's JS client bundle at ``/fhir-client.js``; yields its base URL.
- ``drive(args)``: run tests/js/drive_smart_app.mjs (playwright-core + Debian chromium) with ``args``
  and return its JSON report (see the script's header for the arguments and the report).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent / "js"
APP_DIR = JS_DIR / "app"
DRIVER = JS_DIR / "drive_smart_app.mjs"
BUNDLE = JS_DIR / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
PLAYWRIGHT = JS_DIR / "node_modules" / "playwright-core" / "package.json"


def chromium_path() -> str | None:
    env = os.environ.get("CHROMIUM_PATH")
    if env:
        return env if Path(env).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_tooling_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if chromium_path() is None:
        return "chromium is not installed"
    for f in (BUNDLE, PLAYWRIGHT):
        if not f.exists():
            return f"{f.relative_to(JS_DIR.parent.parent)} is missing (npm ci in tests/js)"
    return None


def require_browser_tooling() -> None:
    problem = browser_tooling_problem()
    if problem is None:
        return
    message = f"browser tooling: {problem}; run `bash .ci/install-browser`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class _AppHandler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        name = path.split("?", 1)[0].split("#", 1)[0]
        if name in ("/fhir-client.js", "/fhir-client.js.map"):
            return str(BUNDLE.parent / name.lstrip("/"))
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a browser closing a connection early (BrokenPipe…) is no test failure


@contextlib.contextmanager
def serve_app(host: str = "127.0.0.1") -> Iterator[str]:
    """Serve tests/js/app and the fhirclient bundle on ``host`` (a free port); yield the base URL."""
    handler = functools.partial(_AppHandler, directory=str(APP_DIR))
    httpd = _QuietServer((host, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def drive(args: dict, timeout: float | None = None) -> dict:
    """Run the browser driver; its JSON report, plus ``returncode`` (and ``stderr`` when not ok)."""
    limit = timeout if timeout is not None else args.get("timeoutMs", 30000) / 1000 + 30
    proc = subprocess.run(
        ["node", str(DRIVER), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=limit,
        cwd=JS_DIR,
    )
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        report = {"ok": False, "status": "error", "error": "driver printed no JSON", "stdout": proc.stdout}
    report["returncode"] = proc.returncode
    if proc.returncode != 0 or not report.get("ok"):
        report["stderr"] = proc.stderr[-4000:]
    return report
