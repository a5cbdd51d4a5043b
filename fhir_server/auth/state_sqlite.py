"""SQLite auth state: one WAL file, one connection guarded by a lock (the work per call is tiny)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .state import AuthState

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS temp (
    kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, expires REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS temp_expires ON temp (expires);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    id TEXT PRIMARY KEY, family TEXT NOT NULL, doc TEXT NOT NULL, expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens (family);
CREATE TABLE IF NOT EXISTS issued_tokens (jti TEXT PRIMARY KEY, family TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS issued_tokens_family ON issued_tokens (family);
CREATE TABLE IF NOT EXISTS revoked_tokens (jti TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked_families (family TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assertions (id TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (id TEXT PRIMARY KEY, n INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keys (kid TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, doc TEXT NOT NULL);
"""

_EXPIRING = ("temp", "refresh_tokens", "issued_tokens", "revoked_tokens", "revoked_families", "assertions", "counters")


def _create_private(path: str) -> None:
    """The file holds private keys and password hashes: readable by the server's user only."""
    if path == ":memory:":
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


class SQLiteAuthState(AuthState):
    def __init__(self, path: str) -> None:
        _create_private(path)
        self.path = path
        self._lock = threading.Lock()
        # Autocommit; multi-statement changes take BEGIN IMMEDIATE (serialised with other processes too).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted account leaves no bytes in free pages
        self._db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _run(self, sql: str, args: tuple) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # --- registrations
    def put_client(self, client: dict) -> None:
        self._run("INSERT OR REPLACE INTO clients (id, doc) VALUES (?, ?)", (client["client_id"], json.dumps(client)))

    def get_client(self, client_id: str) -> dict | None:
        row = self._one("SELECT doc FROM clients WHERE id = ?", (client_id,))
        return json.loads(row[0]) if row else None

    def put_user(self, user: dict) -> None:
        self._run("INSERT OR REPLACE INTO users (id, doc) VALUES (?, ?)", (user["username"], json.dumps(user)))

    def get_user(self, username: str) -> dict | None:
        row = self._one("SELECT doc FROM users WHERE id = ?", (username,))
        return json.loads(row[0]) if row else None

    def delete_user(self, username: str) -> None:
        self._run("DELETE FROM users WHERE id = ?", (username,))

    # --- short-lived documents
    def put_temp(self, kind: str, key: str, doc: dict, expires: float) -> None:
        self._run(
            "INSERT OR REPLACE INTO temp (kind, id, doc, expires, used) VALUES (?, ?, ?, ?, 0)",
            (kind, key, json.dumps(doc), expires),
        )

    def get_temp(self, kind: str, key: str, now: float) -> dict | None:
        row = self._one("SELECT doc FROM temp WHERE kind = ? AND id = ? AND expires > ?", (kind, key, now))
        return json.loads(row[0]) if row else None

    def take_temp(self, kind: str, key: str, now: float) -> tuple[dict | None, bool]:
        with self._tx() as db:
            row = db.execute("SELECT doc, used FROM temp WHERE kind = ? AND id = ? AND expires > ?", (kind, key, now))
            found = row.fetchone()
            if found is None:
                return None, False
            if not found[1]:
                db.execute("UPDATE temp SET used = 1 WHERE kind = ? AND id = ?", (kind, key))
            return json.loads(found[0]), not found[1]

    def delete_temp(self, kind: str, key: str) -> None:
        self._run("DELETE FROM temp WHERE kind = ? AND id = ?", (kind, key))

    # --- refresh tokens
    def put_refresh_token(self, token_id: str, family: str, doc: dict, expires: float) -> None:
        self._run(
            "INSERT INTO refresh_tokens (id, family, doc, expires, revoked) "
            "VALUES (?, ?, ?, ?, EXISTS (SELECT 1 FROM revoked_families WHERE family = ?))",
            (token_id, family, json.dumps(doc), expires, family),
        )

    def get_refresh_token(self, token_id: str) -> dict | None:
        row = self._one("SELECT doc, family, expires, used, revoked FROM refresh_tokens WHERE id = ?", (token_id,))
        if row is None:
            return None
        doc, family, expires, used, revoked = row
        return {**json.loads(doc), "family": family, "expires": expires, "used": bool(used), "revoked": bool(revoked)}

    def use_refresh_token(self, token_id: str) -> bool:
        sql = "UPDATE refresh_tokens SET used = 1 WHERE id = ? AND used = 0 AND revoked = 0"
        return self._run(sql, (token_id,)) == 1

    def revoke_family(self, family: str, expires: float) -> list[str]:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO revoked_families (family, expires) VALUES (?, ?)", (family, expires))
            db.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?", (family,))
            db.execute(
                "INSERT OR IGNORE INTO revoked_tokens (jti, expires) SELECT jti, expires FROM issued_tokens "
                "WHERE family = ?",
                (family,),
            )
            return [jti for (jti,) in db.execute("SELECT jti FROM issued_tokens WHERE family = ?", (family,))]

    # --- access tokens
    def record_access_token(self, jti: str, family: str, expires: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO issued_tokens (jti, family, expires) VALUES (?, ?, ?)", (jti, family, expires))
            db.execute(
                "INSERT OR IGNORE INTO revoked_tokens (jti, expires) SELECT ?, ? "
                "WHERE EXISTS (SELECT 1 FROM revoked_families WHERE family = ?)",
                (jti, expires, family),
            )

    def revoke_access_token(self, jti: str, expires: float) -> None:
        self._run("INSERT OR REPLACE INTO revoked_tokens (jti, expires) VALUES (?, ?)", (jti, expires))

    def is_revoked(self, jti: str) -> bool:
        return self._one("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)) is not None

    # --- client assertions
    def remember_assertion(self, key: str, expires: float, now: float) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM assertions WHERE id = ? AND expires <= ?", (key, now))
            return (
                db.execute("INSERT OR IGNORE INTO assertions (id, expires) VALUES (?, ?)", (key, expires)).rowcount == 1
            )

    # --- counters
    def increment(self, key: str, expires: float, now: float) -> int:
        with self._tx() as db:
            db.execute("DELETE FROM counters WHERE id = ? AND expires <= ?", (key, now))
            db.execute(
                "INSERT INTO counters (id, n, expires) VALUES (?, 1, ?) ON CONFLICT (id) DO UPDATE SET n = n + 1",
                (key, expires),
            )
            return db.execute("SELECT n FROM counters WHERE id = ?", (key,)).fetchone()[0]

    def count(self, key: str, now: float) -> int:
        row = self._one("SELECT n FROM counters WHERE id = ? AND expires > ?", (key, now))
        return row[0] if row else 0

    def reset(self, key: str) -> None:
        self._run("DELETE FROM counters WHERE id = ?", (key,))

    # --- keys
    def list_keys(self) -> list[dict]:
        with self._lock:
            return [json.loads(doc) for (doc,) in self._db.execute("SELECT doc FROM keys")]

    def add_key(self, key: dict) -> bool:
        try:
            self._run("INSERT INTO keys (kid, seq, doc) VALUES (?, ?, ?)", (key["kid"], key["seq"], json.dumps(key)))
        except sqlite3.IntegrityError:
            return False
        return True

    def update_key(self, kid: str, fields: dict) -> None:
        with self._tx() as db:
            row = db.execute("SELECT doc FROM keys WHERE kid = ?", (kid,)).fetchone()
            if row is not None:
                db.execute("UPDATE keys SET doc = ? WHERE kid = ?", (json.dumps({**json.loads(row[0]), **fields}), kid))

    def delete_key(self, kid: str) -> None:
        self._run("DELETE FROM keys WHERE kid = ?", (kid,))

    # --- housekeeping
    def purge(self, now: float) -> None:
        with self._tx() as db:
            for table in _EXPIRING:
                db.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))  # fixed table names

    def close(self) -> None:
        with self._lock:
            self._db.close()
