#!/usr/bin/env python3
"""What one AuditEvent's index entries cost in SQLite, and whether deferring them would save anything (issue
11: where an audited read's time goes).

On a copy of a corpus database (``--db``, e.g. the policy corpus: 5.5 M index entries), in this process, with
the server's own connection settings (``store.sqlite._connect``) and its AuditEvent index entries
(``audit.trace.audit_entries`` of a professional's read event):

1. **inline** — what the trail does today per group commit of ``--group`` events: the version rows, the
   current pointers, the index rows (``_append``), COMMIT; µs per event, of which index rows.
2. **deferred** — the alternative of a write-optimised trail: versions and pointers inline, the index entries
   parked as one blob per event in a side table, then indexed in one large sorted batch later; µs per event
   inline, and µs per event of the later batch (what the deferral moves, not what it saves).

Usage (from the repository root; copies ``--db`` to a scratch file first, the original is not touched)::

    .venv/bin/python bench/audit_index_cost.py --db /tmp/policy_corpus/policy.db
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import orjson

from fhir_server.audit.events import Access, Actor, build_audit_event
from fhir_server.audit.trace import _prepare
from fhir_server.policy.professional import Professional
from fhir_server.security.principal import Principal
from fhir_server.store.sqlite import SCHEMA, _append, _connect

INSERT_INDEX = "INSERT INTO search_index (type, id, param, value, system, low, high) VALUES (?, ?, ?, ?, ?, ?, ?)"


def events(n: int) -> list:
    ps = Professional("810000000001", "10", "Practitioner/dr", "PractitionerRole/dr-role", "Organization/o")
    claims = {"ps": ps.to_claim(), "fhirUser": "PractitionerRole/dr-role", "client_id": "bench", "sub": "dr",
              "jti": "j", "scope": "user/*.rs"}  # fmt: skip
    actor = Actor.from_principal(Principal.from_claims(claims))
    out = []
    for i in range(n):
        access = Access(actor, "read", "http://127.0.0.1:8080", patients=[f"p{i % 5000}"],
                        resources=[f"DocumentReference/d{i}/_history/1"], address="127.0.0.1", started=i)  # fmt: skip
        version, entries, _ = _prepare(build_audit_event(access))
        out.append((version, entries))
    return out


def _versions_and_pointers(conn, batch: list) -> None:
    """The version rows and current pointers of new resources (``_append`` without the index rows)."""
    conn.executemany(
        "INSERT INTO resource_version (type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, ?, ?)",
        [(v.type, v.id, v.version, v.last_updated, v.method, v.body) for v, _ in batch],
    )
    conn.executemany(
        "INSERT INTO resource (type, id, version, deleted) VALUES (?, ?, ?, 0)",
        [(v.type, v.id, v.version) for v, _ in batch],
    )


def inline(conn, batches: list[list]) -> dict:
    index_rows = total = rows = 0.0
    for batch in batches:
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        _append(conn, batch)
        conn.execute("COMMIT")
        total += time.perf_counter() - start
        rows += sum(len(e) for _, e in batch)
    n = sum(len(b) for b in batches)
    # the index rows alone, same batches again (new ids)
    for batch in batches:
        again = [(dataclasses.replace(v, id=v.id + "x"), e) for v, e in batch]
        conn.execute("BEGIN IMMEDIATE")
        _versions_and_pointers(conn, again)
        start = time.perf_counter()
        conn.executemany(INSERT_INDEX, [(v.type, v.id, *x) for v, e in again for x in e])  # fmt: skip
        index_rows += time.perf_counter() - start
        conn.execute("COMMIT")
    return {"us_per_event": total / n * 1e6, "index_rows_per_event": rows / n,
            "index_us_per_row": index_rows / rows * 1e6}  # fmt: skip


def deferred(conn, batches: list[list]) -> dict:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS bench_index_pending (seq INTEGER PRIMARY KEY, type TEXT, id TEXT, entries BLOB)"
    )
    total = 0.0
    for batch in batches:
        batch = [(dataclasses.replace(v, id=v.id + "d"), e) for v, e in batch]
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        _versions_and_pointers(conn, batch)
        conn.executemany("INSERT INTO bench_index_pending (type, id, entries) VALUES (?, ?, ?)",
                         [(v.type, v.id, orjson.dumps([tuple(x) for x in e])) for v, e in batch])  # fmt: skip
        conn.execute("COMMIT")
        total += time.perf_counter() - start
    n = sum(len(b) for b in batches)
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    pending = conn.execute("SELECT type, id, entries FROM bench_index_pending ORDER BY seq").fetchall()
    rows = sorted(((t, i, *x) for t, i, e in pending for x in orjson.loads(e)), key=lambda r: (r[2], str(r[3]), r[1]))
    conn.executemany(
        "INSERT INTO search_index (type, id, param, value, system, low, high) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
    )
    conn.execute("DELETE FROM bench_index_pending")
    conn.execute("COMMIT")
    later = time.perf_counter() - start
    return {"inline_us_per_event": total / n * 1e6, "later_us_per_event": later / n * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, required=True, help="a corpus SQLite database (copied first)")
    p.add_argument("--events", type=int, default=3200)
    p.add_argument("--group", type=int, default=16, help="events per group commit (the trail's batches)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-index-", dir=args.db.parent) as tmp:
        scratch = Path(tmp) / "scratch.db"
        shutil.copyfile(args.db, scratch)
        conn = _connect(str(scratch))
        conn.executescript(SCHEMA)
        made = events(args.events)
        batches = [made[i : i + args.group] for i in range(0, len(made), args.group)]
        print(f"{args.events} AuditEvents in groups of {args.group}, database {args.db.stat().st_size >> 20} MiB")
        print("inline:  ", {k: round(v, 1) for k, v in inline(conn, batches).items()})
        print("deferred:", {k: round(v, 1) for k, v in deferred(conn, batches).items()})
        conn.close()


if __name__ == "__main__":
    main()
