"""Shared test fixtures.

Store fixtures (``mongo_uri``, ``mongo_url``, ``store_url``, ``store``): run a test against both store
backends. MongoDB is either a real server (``FHIR_SERVER_TEST_MONGODB_URI``, a replica set: the store
needs transactions) or SecantusDB (a WiredTiger-based server speaking MongoDB's wire protocol, a
single-node replica set), started once per session by ``tests/mongo_sidecar.py`` from its own virtualenv
(``.ci/install-secantus``, or ``FHIR_SERVER_SECANTUSD`` naming its ``secantusd-py``) and reached over the
wire only (it is GPL-2.0: never imported). Without either, the Mongo tests are skipped — except on CI
(``CI`` set), where they must run and fail instead.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from fhir_server.store import Store, open_store

FHIR_BASE = "http://fhir.test"
REPO_ROOT = Path(__file__).resolve().parent.parent
MONGO_SIDECAR = Path(__file__).resolve().parent / "mongo_sidecar.py"
MONGO_SIDECAR_START_TIMEOUT = 45.0  # the sidecar gives up (and says why) after 30 s
MONGO_INSTALL_HINT = "run .ci/install-secantus (or set FHIR_SERVER_TEST_MONGODB_URI to a replica set)"


def _mongo_unavailable(reason: str) -> None:
    """Skip locally; on CI the Mongo tests must run, so fail."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the MongoDB tests)", pytrace=False)
    pytest.skip(reason)


def _secantusd() -> Path | None:
    """SecantusDB's server executable: ``FHIR_SERVER_SECANTUSD``, else ``.venv-secantus/bin/secantusd-py``."""
    explicit = os.environ.get("FHIR_SERVER_SECANTUSD")
    if explicit:
        if not Path(explicit).exists():
            pytest.fail(f"FHIR_SERVER_SECANTUSD={explicit} does not exist", pytrace=False)
        return Path(explicit)
    default = REPO_ROOT / ".venv-secantus" / "bin" / "secantusd-py"
    return default if default.exists() else None


def _read_uri_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The sidecar's first stdout line, or an error once it exits or ``timeout`` passes."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                line = proc.stdout.readline()
                if line.startswith("mongodb://"):
                    return line.strip()
                if not line:  # EOF: the sidecar died
                    break
    proc.terminate()  # not kill: the sidecar stops its server on SIGTERM
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    raise RuntimeError(f"MongoDB test server did not start (exit {proc.returncode}): {err[-3000:]}")


def _stop_sidecar(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # the sidecar stops its server and exits when its stdin closes
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A MongoDB server URI (``mongodb://host:port/?options``) for the whole test session."""
    external = os.environ.get("FHIR_SERVER_TEST_MONGODB_URI")
    if external:
        yield external
        return
    secantusd = _secantusd()
    if secantusd is None:
        _mongo_unavailable(f"MongoDB test server (SecantusDB) not installed: {MONGO_INSTALL_HINT}")
    proc = subprocess.Popen(
        [sys.executable, str(MONGO_SIDECAR), str(secantusd)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        uri = _read_uri_line(proc, MONGO_SIDECAR_START_TIMEOUT)
    except RuntimeError as exc:
        _stop_sidecar(proc)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield uri
    finally:
        _stop_sidecar(proc)


def mongo_url_for_database(uri: str, database: str) -> str:
    """``mongodb://h:p/old?opts`` → ``mongodb://h:p/<database>?opts`` (query string kept)."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@pytest.fixture
def mongo_url(mongo_uri: str) -> Iterator[str]:
    """A MongoDB URL naming a fresh database (``test_<uuid>``), dropped after the test."""
    database = f"test_{uuid.uuid4().hex}"
    url = mongo_url_for_database(mongo_uri, database)
    yield url
    from pymongo import MongoClient

    client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    finally:
        client.close()


#: The two backends, as a module-scoped fixture's params (one server per store for a whole module).
BACKENDS = ["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)]


@contextlib.contextmanager
def module_store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty store of the backend ``request.param`` names, for a module-scoped fixture (the Mongo stand-in
    is slow to start a database: modules whose tests name what they create share one); dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'fhir.db'}"
        return
    database = f"test_{uuid.uuid4().hex}"
    url = mongo_url_for_database(request.getfixturevalue("mongo_uri"), database)
    try:
        yield url
    finally:
        from pymongo import MongoClient

        client: MongoClient = MongoClient(url, serverSelectionTimeoutMS=5000)
        try:
            client.drop_database(database)
        finally:
            client.close()


@contextlib.asynccontextmanager
async def seeded_client(url: str, seed: list[dict], verifier: object) -> AsyncIterator[httpx.AsyncClient]:
    """A server on ``url`` without an audit trail (tested on its own: its writes would triple a Mongo run),
    ``seed`` written while access is open (the operator's feed), then behind ``verifier`` (the tokens)."""
    from fhir_server.app import create_app
    from fhir_server.config import Settings

    app = create_app(Settings(store=url, auth=False, load_definitions=False, validation_processes=0, audit=False))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        for resource in seed:
            r = await c.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
            assert r.status_code == 201, r.text
        app.state.auth = verifier
        yield c


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend: ``sqlite:////tmp/…/fhir.db`` and a fresh Mongo database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fhir.db'}"
    return request.getfixturevalue("mongo_url")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A started, empty Store of each backend, closed after the test."""
    s = open_store(store_url)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def fhir_client(store_url: str, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound in-process to a started server app on ``store_url`` (base http://fhir.test)."""
    from fhir_server.app import create_app
    from fhir_server.config import Settings

    settings.setdefault("load_definitions", False)  # 1,379 SearchParameters per fresh store: only where tested
    settings.setdefault("auth", False)  # the FHIR behaviour under test; access control has its own tests
    settings.setdefault("validation_processes", 0)  # one helper process per app would slow the suite down
    app = create_app(Settings(store=store_url, **settings))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url=FHIR_BASE) as c:
        yield c


# --- the real server process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fhir_server_command() -> list[str]:
    exe = shutil.which("fhir-server", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "fhir_server.cli"]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def wait_until_serving(base: str, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Poll ``GET [base]/metadata`` until it answers 200; False if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.fixture
def server(store_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``fhir-server serve`` started as a subprocess on a free port over each store: (base URL, process)."""
    store = store_url
    port = free_port()
    env = {**os.environ, "FHIR_SERVER_STORE": store, "FHIR_SERVER_LOAD_DEFINITIONS": "false"}
    proc = subprocess.Popen(
        [*fhir_server_command(), "serve", "--port", str(port), "--auth", "off"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_serving(base, proc):
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"fhir-server serve did not start: {out[-3000:]}")
        yield base, proc
    finally:
        stop_process(proc)
