"""``fhir-server users|clients|token|launch|keys``, run in-process against a temporary store."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from fhir_server.auth import create_auth_server
from fhir_server.auth.state import LAUNCH
from fhir_server.cli import main
from fhir_server.config import Settings

BASE = "http://127.0.0.1:8080"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("FHIR_SERVER_AUTH_STATE", "FHIR_SERVER_BASE_URL", "FHIR_SERVER_HOST", "FHIR_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 'fhir.db'}"
    auth = create_auth_server(Settings(store=url), url)  # the state a served store has (commands never create one)
    auth.start_sync()
    auth.close_sync()
    return url


@pytest.fixture
def opened(store: str) -> Iterator:
    def open_():
        auth = create_auth_server(Settings(store=store), store)
        auth.start_sync()
        opened.servers.append(auth)
        return auth

    opened.servers = []
    yield open_
    for auth in opened.servers:
        auth.close_sync()


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_users_add(store: str, opened, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    code, out, err = run(capsys, "users", "add", "zoe", "--fhir-user", "Patient/zoe", "--patient", "lea",
                         "--password-stdin", "--totp", "--store", store)  # fmt: skip
    assert code == 0 and out.startswith("otpauth://totp/") and "saved" in err
    user = opened().user("zoe")
    assert user.managed_patients == ["zoe", "lea"] and user.totp_secret in out
    assert "a long password" not in json.dumps(user.to_doc())
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = run(capsys, "users", "add", "x", "--fhir-user", "Patient/x", "--password-stdin", "--store", store)
    assert code == 2 and "error" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, no --password-stdin
    assert run(capsys, "users", "add", "y", "--fhir-user", "Patient/y", "--store", store)[0] == 2


def test_clients_add(store: str, opened, capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "clients", "add", "conf", "--type", "confidential", "--redirect-uri",
                       "https://app/cb", "--scope", "openid patient/*.rs", "--store", store)  # fmt: skip
    secret = out.strip()
    assert code == 0 and len(secret) > 30
    key = ECKey.generate_key("P-384", parameters={"kid": "k"})
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    code, out, _ = run(capsys, "clients", "add", "svc", "--type", "backend", "--jwks", str(jwks_file), "--store", store)
    assert code == 0 and out == ""
    code, _, _ = run(capsys, "clients", "add", "pub", "--type", "public", "--redirect-uri", "https://app/cb",
                     "--store", store)  # fmt: skip
    assert code == 0
    assert run(capsys, "clients", "add", "bad", "--type", "public", "--store", store)[0] == 2
    auth = opened()
    assert auth.client("conf").check_client_secret(secret) and auth.client("conf").scope == ["openid", "patient/*.rs"]
    assert auth.client("svc").jwks["keys"][0]["kid"] == "k" and auth.client("pub").type == "public"


def test_token_launch_and_key_rotation(store: str, opened, capsys) -> None:
    code, out, _ = run(capsys, "token", "--client", "svc", "--scope", "system/*.rs", "--patient", "p1",
                       "--lifetime", "120", "--store", store)  # fmt: skip
    assert code == 0
    token = out.strip()
    claims = opened().verify_access_token(token, BASE)
    assert claims["client_id"] == "svc" and claims["patient"] == "p1" and claims["exp"] - claims["iat"] == 120
    code, out, _ = run(capsys, "launch", "--patient", "p1", "--encounter", "e1", "--store", store)
    launch = out.strip()
    assert code == 0 and opened().state.get_temp(LAUNCH, launch, 0) == {"patient": "p1", "encounter": "e1"}
    code, out, err = run(capsys, "keys", "rotate", "--now", "--store", store)
    kid = out.strip()
    assert code == 0 and kid in err
    auth = opened()
    assert {k["kid"] for k in auth.keys.jwks()["keys"]} >= {kid}
    assert len(auth.keys.jwks()["keys"]) == 2
    assert auth.verify_access_token(token, BASE)["patient"] == "p1"  # signed by the previous key
    code, out, _ = run(capsys, "token", "--client", "svc", "--scope", "system/*.rs", "--aud", "https://fhir.example/r4",
                       "--store", store)  # fmt: skip
    assert opened().verify_access_token(out.strip(), "https://fhir.example/r4")["iss"] == "https://fhir.example/r4"


def test_commands_refuse_to_create_a_missing_auth_state(tmp_path: Path, capsys, monkeypatch) -> None:
    """Run from the wrong directory, an administration command must not mint tokens signed by new keys."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FHIR_SERVER_STORE", raising=False)
    monkeypatch.delenv("FHIR_SERVER_AUTH_STATE", raising=False)
    commands = [
        ("token", "--client", "x", "--scope", "system/*.rs"),
        ("keys", "rotate"),
        ("clients", "add", "c", "--type", "public", "--redirect-uri", "https://app/cb"),
        ("launch",),
    ]
    for argv in commands:
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", argv
        assert f"no authorization state at {tmp_path / 'data' / 'auth.db'}" in err and "--init" in err
    assert not (tmp_path / "data").exists()  # nothing created
    code, out, _ = run(capsys, "token", "--client", "x", "--scope", "system/*.rs", "--init")
    assert code == 0 and out.count(".") == 2 and (tmp_path / "data" / "auth.db").is_file()
    code, again, _ = run(capsys, "token", "--client", "x", "--scope", "system/*.rs")  # exists now: no --init
    assert code == 0 and again.count(".") == 2


def test_reindex_refuses_a_missing_database(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "reindex", "--store", "sqlite:///nowhere.db")
    assert code == 2 and f"no database at {tmp_path / 'nowhere.db'}" in err
    assert not (tmp_path / "nowhere.db").exists()


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (
            ("serve", "--store", "postgres://x"),
            {},
            "invalid setting store (--store or FHIR_SERVER_STORE) 'postgres://x'",
        ),
        (("serve",), {"FHIR_SERVER_PORT": "abc"}, "invalid setting port (--port or FHIR_SERVER_PORT) 'abc'"),
        (("serve", "--log-level", "loud"), {}, "accepted: critical, error, warning, info, debug, trace"),
        (("serve", "--base-url", "fhir.example"), {}, "invalid setting base_url"),
        (("token", "--client", "x", "--scope", "system/*.rs", "--store", "mysql://u:secret@db/x"), {}, "unsupported"),
        (("load", "--store", "sqlite://", "x.json"), {}, "invalid setting store"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(argv, env, named, capsys, monkeypatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert named in err and "Traceback" not in err and "secret" not in err
    assert len(err.strip().splitlines()) == 1, err
