"""Auth state conformance: the same semantics on SQLite and on MongoDB."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_server.auth.state import CODE, AuthState, default_state_url, open_auth_state, secret_id


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthState]:
    url = f"sqlite:///{tmp_path / 'auth.db'}" if request.param == "sqlite" else request.getfixturevalue("mongo_url")
    s = open_auth_state(url)
    try:
        yield s
    finally:
        s.close()


def test_default_state_url() -> None:
    assert default_state_url("sqlite:///./data/fhir.db") == "sqlite:///data/auth.db"
    assert default_state_url("sqlite:////srv/fhir/fhir.db") == "sqlite:////srv/fhir/auth.db"
    assert default_state_url("mongodb://h:27017/fhir?replicaSet=rs") == "mongodb://h:27017/fhir?replicaSet=rs"


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    s = open_auth_state(f"sqlite:///{tmp_path / 'sub' / 'auth.db'}")
    s.close()
    assert (tmp_path / "sub" / "auth.db").stat().st_mode & 0o077 == 0


def test_clients_and_users(state: AuthState) -> None:
    assert state.get_client("app") is None
    state.put_client({"client_id": "app", "type": "public", "redirect_uris": ["https://app/cb"]})
    state.put_client({"client_id": "app", "type": "public", "redirect_uris": ["https://app/cb2"]})
    assert state.get_client("app")["redirect_uris"] == ["https://app/cb2"]
    state.put_user({"username": "zoe", "fhir_user": "Patient/1", "patients": ["1", "2"]})
    assert state.get_user("zoe")["patients"] == ["1", "2"]
    assert state.get_user("nobody") is None


def test_delete_user_removes_only_that_user(state: AuthState) -> None:
    state.put_user({"username": "zoe", "fhir_user": "Patient/1"})
    state.put_user({"username": "tom", "fhir_user": "Patient/2"})
    state.delete_user("zoe")
    state.delete_user("nobody")  # unknown: nothing to do, no error
    assert state.get_user("zoe") is None
    assert state.get_user("tom") == {"username": "tom", "fhir_user": "Patient/2"}


def test_temp_documents_take_once_and_expire(state: AuthState) -> None:
    now = time.time()
    state.put_temp(CODE, "c1", {"client_id": "app"}, now + 60)
    assert state.get_temp(CODE, "c1", now) == {"client_id": "app"}
    assert state.take_temp(CODE, "c1", now) == ({"client_id": "app"}, True)
    assert state.take_temp(CODE, "c1", now) == ({"client_id": "app"}, False)  # replay seen as such
    assert state.take_temp(CODE, "c1", now + 61) == (None, False)  # expired
    assert state.get_temp(CODE, "c1", now + 61) is None
    assert state.take_temp(CODE, "unknown", now) == (None, False)
    state.delete_temp(CODE, "c1")
    assert state.get_temp(CODE, "c1", now) is None


def test_take_is_atomic_across_threads(state: AuthState) -> None:
    now = time.time()
    state.put_temp(CODE, "race", {"x": 1}, now + 60)
    wins: list[bool] = []

    def take() -> None:
        wins.append(state.take_temp(CODE, "race", now)[1])

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_refresh_rotation_and_family_revocation(state: AuthState) -> None:
    now = time.time()
    first, second = secret_id("rt1"), secret_id("rt2")
    state.put_refresh_token(first, "fam", {"client_id": "app", "scope": "openid"}, now + 3600)
    got = state.get_refresh_token(first)
    assert got["client_id"] == "app" and got["family"] == "fam" and not got["used"] and not got["revoked"]
    assert abs(got["expires"] - (now + 3600)) < 1
    assert state.use_refresh_token(first) is True
    assert state.use_refresh_token(first) is False  # rotated: a second use is a replay
    state.put_refresh_token(second, "fam", {"client_id": "app"}, now + 3600)
    state.record_access_token("jti-1", "fam", now + 300)
    state.record_access_token("jti-other", "other", now + 300)
    assert not state.is_revoked("jti-1")
    assert state.revoke_family("fam", now + 3600) == ["jti-1"]
    assert state.get_refresh_token(second)["revoked"] is True
    assert state.use_refresh_token(second) is False
    assert state.is_revoked("jti-1") and not state.is_revoked("jti-other")
    # born revoked after the family was revoked (a refresh racing with the revocation)
    state.put_refresh_token(secret_id("rt3"), "fam", {}, now + 3600)
    assert state.get_refresh_token(secret_id("rt3"))["revoked"] is True
    state.record_access_token("jti-2", "fam", now + 300)
    assert state.is_revoked("jti-2")
    assert state.get_refresh_token(secret_id("unknown")) is None


def test_access_token_revocation(state: AuthState) -> None:
    now = time.time()
    assert not state.is_revoked("a")
    state.revoke_access_token("a", now + 300)
    state.revoke_access_token("a", now + 300)
    assert state.is_revoked("a")


def test_assertion_replay(state: AuthState) -> None:
    now = time.time()
    assert state.remember_assertion("client:jti", now + 300, now) is True
    assert state.remember_assertion("client:jti", now + 300, now) is False
    assert state.remember_assertion("client:jti", now + 900, now + 301) is True  # the old one expired


def test_counters(state: AuthState) -> None:
    now = time.time()
    assert state.count("login:zoe", now) == 0
    assert [state.increment("login:zoe", now + 900, now) for _ in range(3)] == [1, 2, 3]
    assert state.count("login:zoe", now) == 3
    assert state.count("login:zoe", now + 901) == 0
    assert state.increment("login:zoe", now + 1900, now + 901) == 1  # expired counter starts again
    state.reset("login:zoe")
    assert state.count("login:zoe", now) == 0


def test_keys(state: AuthState) -> None:
    assert state.list_keys() == []
    assert state.add_key({"kid": "k1", "seq": 0, "jwk": {"kty": "RSA"}}) is True
    assert state.add_key({"kid": "k2", "seq": 0, "jwk": {}}) is False  # concurrent rotation loses
    assert state.add_key({"kid": "k2", "seq": 1, "jwk": {}}) is True
    state.update_key("k1", {"retired": 12.5})
    keys = {k["kid"]: k for k in state.list_keys()}
    assert keys["k1"]["retired"] == 12.5 and keys["k1"]["jwk"] == {"kty": "RSA"}
    state.delete_key("k1")
    assert [k["kid"] for k in state.list_keys()] == ["k2"]


def test_purge(state: AuthState) -> None:
    now = time.time()
    state.put_temp(CODE, "old", {}, now - 1)
    state.put_temp(CODE, "new", {}, now + 60)
    state.revoke_access_token("old", now - 1)
    state.purge(now)
    assert state.get_temp(CODE, "new", now) == {}
    assert not state.is_revoked("old")
