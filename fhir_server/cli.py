"""``fhir-server``: the command line (serve, …). Flags override FHIR_SERVER_* environment variables."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .auth.state import MissingAuthState
from .config import SettingsError, load_settings

log = logging.getLogger("fhir_server")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the FHIR server", description="Run the FHIR REST server.")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1; env FHIR_SERVER_HOST)")
    p.add_argument("--port", type=int, help="TCP port (default 8080; env FHIR_SERVER_PORT)")
    p.add_argument(
        "--store",
        help="store URL: sqlite:///rel.db, sqlite:////abs.db or mongodb://host/db "
        "(default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE)",
    )
    p.add_argument("--workers", type=int, help="worker processes (default 1; env FHIR_SERVER_WORKERS)")
    p.add_argument("--base-url", help="public base URL used in links (env FHIR_SERVER_BASE_URL)")
    p.add_argument("--log-level", help="debug, info, warning, error (env FHIR_SERVER_LOG_LEVEL)")
    p.add_argument(
        "--auth",
        choices=("on", "off"),
        help="SMART/OAuth2 bearer tokens required (on, the default) or not (off: development only, accepted "
        "only on a loopback address; env FHIR_SERVER_AUTH)",
    )
    p.set_defaults(func=serve)


def _reindex_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reindex",
        help="rebuild search index entries",
        description="Recompute the search index entries of every stored resource (after a SearchParameter change).",
    )
    p.add_argument("--store", help="store URL (default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE)")
    p.add_argument("--type", action="append", dest="types", metavar="TYPE", help="only this type (repeatable)")
    p.set_defaults(func=reindex)


def reindex(args: argparse.Namespace) -> int:
    import asyncio

    from .interactions.reindex import reindex as run
    from .store import open_store
    from .validation import R4_RESOURCE_TYPES

    settings = load_settings(**_overrides(args))
    unknown = sorted(set(args.types or ()) - R4_RESOURCE_TYPES)
    if unknown:
        print(f"unknown resource type(s): {', '.join(unknown)}", file=sys.stderr)
        return 2

    require_store(settings.store)

    async def main() -> int:
        store = open_store(settings.store, write_concern=settings.mongo_write_concern)
        async with store:
            return await run(store, args.types, lambda t, n: print(f"\r{t}: {n} resources", end="", flush=True))

    count = asyncio.run(main())
    print(f"\nreindexed {count} resources", flush=True)
    return 0


def _load_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="bulk-load Bundles and NDJSON files",
        description="Load transaction, batch and collection Bundles (JSON files), NDJSON files (one resource per"
        " line), directories (walked recursively) and .tgz/.tar.gz archives (read as a stream) into the store,"
        " with the rules of POST [base]: a transaction Bundle is all or nothing, a batch Bundle goes entry by"
        " entry, collection entries and NDJSON lines are creates (no id) or update-as-create (PUT Type/id).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, directory or archive to load")
    p.add_argument("--store", help="store URL (default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first error (default: report and go on)")
    p.add_argument(
        "--workers",
        type=int,
        dest="load_workers",
        metavar="N",
        help="processes that parse, validate and index (default: the CPU count; 0: all in this process)",
    )
    p.set_defaults(func=load)


def load(args: argparse.Namespace) -> int:
    from .loader import run

    if args.load_workers is not None and args.load_workers < 0:
        print("--workers must be 0 or more", file=sys.stderr)
        return 2
    settings = load_settings(**_overrides(args))
    return run(settings, args.paths, workers=args.load_workers, fail_fast=args.fail_fast)


def _matrix_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "matrix",
        help="show or check the DMP habilitation matrix",
        description="The habilitation matrix: which document types each profession may consult (docs/policy.md).",
    )
    commands = p.add_subparsers(title="matrix commands", metavar="COMMAND")
    file_help = "matrix file (default: FHIR_SERVER_HABILITATION_MATRIX, else the shipped one)"
    show = commands.add_parser(
        "show",
        help="print the matrix by class, or one profession's types and scope",
        description="Print the matrix grouped by class, or with --profession the types one profession may and may"
        " not consult and the SMART granular scope that expresses it.",
    )
    show.add_argument("--profession", metavar="CODE", help="a TRE_G15 profession code (a column of the matrix)")
    show.add_argument("--file", metavar="PATH", help=file_help)
    show.set_defaults(func=matrix_show)
    check = commands.add_parser(
        "check",
        help="validate a matrix file",
        description="Validate a matrix file: exit 0 with a summary, or exit 2 with one line per problem.",
    )
    check.add_argument("--file", metavar="PATH", help=file_help)
    check.set_defaults(func=matrix_check)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _matrix_file(args: argparse.Namespace) -> str | None:
    return args.file or load_settings().habilitation_matrix


def matrix_check(args: argparse.Namespace) -> int:
    from .policy.matrix import UNKNOWN_CLASS, HabilitationMatrix, MatrixError

    try:
        matrix = HabilitationMatrix.read(_matrix_file(args))
    except MatrixError as exc:
        print("\n".join(exc.problems))
        return 2
    problems = matrix.check()
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} problem(s): the server refuses this matrix", file=sys.stderr)
        return 2
    stated, chosen = matrix.counts()
    classes = {r.class_code for r in matrix.rows} - {UNKNOWN_CLASS}
    unknown = sum(1 for r in matrix.rows if r.class_code == UNKNOWN_CLASS)
    print(
        f"ok: {matrix.path}: {len(matrix.rows)} types in {len(classes)} classes x {len(matrix.professions())} "
        f"professions: {stated} stated cells (Y/N), {chosen} least-privilege cells (y/n); {unknown} types of unknown "
        f"class and absent types follow class {matrix.most_restricted_class}"
    )
    return 0


def matrix_show(args: argparse.Namespace) -> int:
    from .policy.matrix import CLASSES, UNKNOWN_CLASS, HabilitationMatrix, MatrixError

    try:
        matrix = HabilitationMatrix.load(_matrix_file(args))
    except MatrixError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        print("fhir-server matrix check lists the problems of a matrix file", file=sys.stderr)
        return 2
    restricted = matrix.most_restricted_class
    restricted_label = f"{restricted} {CLASSES.get(restricted, '')}" if restricted else "none"

    def class_label(code: str) -> str:
        if code == UNKNOWN_CLASS:
            return f"? no class maps these types: they follow the most restricted class, {restricted_label}"
        return f"{code} {CLASSES.get(code, '')}"

    def type_label(row, width: int = 0) -> str:
        short = (
            "LOINC"
            if row.system == "http://loinc.org"
            else row.system.split("/NOS/", 1)[1].split("-", 1)[0]  # TRE_A05
            if "/NOS/" in row.system
            else row.system
        )
        text = f"{short} {row.code} {row.display}"
        return text if not width or len(text) <= width else text[: width - 1] + "…"

    print(f"Habilitation matrix {matrix.path}")
    if args.profession is not None:
        return _matrix_show_profession(matrix, args.profession, class_label, type_label, restricted_label)
    professions = matrix.professions()
    print("Legend: Y/N allowed/denied as a source states it; y/n allowed/denied by a least-privilege choice (no")
    print("        source states the cell); the sources of a row's stated cells follow its cells.")
    print("Professions: " + ", ".join(f"{p} {matrix.profession_label(p)}" for p in professions))
    for ident, citation in matrix.sources.items():
        print(f"Source {ident}: {citation}")
    rule = " ".join(f"{p}:{'Y' if matrix.allows_absent_types(p) else 'N'}" for p in professions)
    print(f"Types absent from the file follow the most restricted class, {restricted_label}: {rule}")
    width = 64
    columns = " ".join(f"{p:>3}" for p in professions)
    current = None
    for row in matrix.rows:
        if row.class_code != current:
            current = row.class_code
            print(f"\n{class_label(current)}")
            print(f"  {'type':<{width}} {columns}")
        cells = " ".join(f"{c.text[0]:>3}" for c in row.cells)
        sources = sorted({c.source for c in row.cells if c.source})
        print(f"  {type_label(row, width):<{width}} {cells}" + (f"   {', '.join(sources)}" if sources else ""))
    stated, chosen = matrix.counts()
    print(f"\n{len(matrix.rows)} types x {len(professions)} professions: {stated} stated, {chosen} least-privilege")
    return 0


def _matrix_show_profession(matrix, profession, class_label, type_label, restricted_label) -> int:
    from .policy.matrix import NoDocumentAccess

    if profession not in matrix.professions():
        print(f"profession {profession!r} is not in the matrix: it may consult no document type "
              f"(columns: {', '.join(matrix.professions())})", file=sys.stderr)  # fmt: skip
        return 2
    column = matrix.professions().index(profession)
    allowed = len(matrix.allowed_types(profession))
    stated, chosen = matrix.counts(profession)
    print(f"Profession {profession} {matrix.profession_label(profession)}: {allowed} of {len(matrix.rows)} types "
          f"allowed ({stated} cells stated by a source, Y/N; {chosen} least-privilege choices, y/n)")  # fmt: skip
    absent = "allowed" if matrix.allows_absent_types(profession) else "denied"
    print(f"Types absent from the file: {absent} (the rule of the most restricted class, {restricted_label})")
    for title, wanted in (("Allowed", True), ("Denied", False)):
        print(f"\n{title}:")
        current = None
        for row in matrix.rows:
            cell = row.cells[column]
            if cell.allowed != wanted:
                continue
            if row.class_code != current:
                current = row.class_code
                print(f"  {class_label(current)}")
            print(f"    {cell.text:<18} {type_label(row)}")
    try:
        criteria = matrix.document_criteria(profession)
    except NoDocumentAccess:
        print("\nScope: none (no document type allowed)")
        return 0
    scope = matrix.document_scope(profession, "user", "rs")
    form = "every type" if not criteria else "allow-list" if criteria[0][0] == "type" else "deny-list"
    print(f"\nScope ({form}, {len(scope or '')} characters):\n{scope}")
    return 0


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="the audit trail (retention purge)", description="The audit trail (docs/audit.md)."
    )
    commands = p.add_subparsers(title="audit commands", metavar="COMMAND")
    purge = commands.add_parser(
        "purge",
        help="remove the AuditEvents recorded before a date (traced)",
        description="Remove every version and index entry of the AuditEvents recorded before DATE (AuditEvent."
        "recorded), then record the purge itself as an AuditEvent naming the OS account that ran it.",
    )
    purge.add_argument("--before", required=True, metavar="DATE", help="a FHIR date or dateTime, e.g. 2024-01-01")
    purge.add_argument("--store", help="store URL (default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE)")
    purge.add_argument(
        "--base-url", help="this server's public base URL, named in the trace (env FHIR_SERVER_BASE_URL)"
    )
    purge.set_defaults(func=audit_purge)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def audit_purge(args: argparse.Namespace) -> int:
    import asyncio

    from .audit.purge import PurgeRefused, purge_before
    from .store import open_store

    settings = load_settings(**_overrides(args))
    require_store(settings.store)
    base = settings.base_url or f"http://{settings.host}:{settings.port}"

    async def main():
        async with open_store(settings.store, write_concern=settings.mongo_write_concern) as store:
            return await purge_before(store, args.before, base=base)

    try:
        result = asyncio.run(main())
    except PurgeRefused as exc:
        print(f"fhir-server audit purge: {exc}", file=sys.stderr)
        return 2
    print(f"purged {result.purged} AuditEvent(s) recorded before {args.before}; traced as AuditEvent/{result.trace_id}")
    return 0


def _patients_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "patients",
        help="the insurer's registry feed (import Patients by INS)",
        description="Patients from the insurer's registry (docs/lifecycle.md).",
    )
    commands = p.add_subparsers(title="patients commands", metavar="COMMAND")
    imp = commands.add_parser(
        "import",
        help="create or update Patients by INS from NDJSON or a Bundle; notify new people",
        description="Import the registry's Patients (NDJSON, one per line, or a Bundle): an existing Patient with "
        "the same INS-NIR gets the registry's demographics (nothing written when they are the same), a new "
        "person gets a pending space and a provisional enrolment code by email (or letter). Bad entries are "
        "listed and skipped (nothing of them is written); the exit status is then 1.",
    )
    imp.add_argument("file", metavar="FILE", help="NDJSON or Bundle (JSON) file; - reads standard input")
    imp.add_argument("--store", help="store URL (default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE)")
    imp.add_argument("--base-url", help="public base URL named in the letters' links (env FHIR_SERVER_BASE_URL)")
    imp.set_defaults(func=patients_import)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def patients_import(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from .audit.events import Actor
    from .audit.purge import operator_account
    from .auth.state import default_state_url, open_auth_state
    from .space.enrolment import Enrolment
    from .space.lifecycle import base_of
    from .space.registry import Importer, RegistryInputError, read_entries
    from .store import open_store

    settings = load_settings(**_overrides(args))
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        entries, errors = read_entries(data)
    except OSError as exc:
        print(f"fhir-server patients import: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except RegistryInputError as exc:
        print(f"fhir-server patients import: {exc}", file=sys.stderr)
        return 2
    state = open_auth_state(settings.auth_state or default_state_url(settings.store),
                            write_concern=settings.mongo_write_concern)  # fmt: skip

    async def main():
        async with open_store(settings.store, write_concern=settings.mongo_write_concern) as store:
            enrolment = Enrolment(state, settings.enrolment_code_days)
            actor = Actor.os_operator(operator_account())
            return await Importer(store, enrolment, settings, base_of(settings), actor).run(entries)

    try:
        result = asyncio.run(main())
    finally:
        state.close()
    for message in [*errors, *result.errors]:
        print(message, file=sys.stderr)
    print(f"{result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
          f"{len(errors) + len(result.errors)} refused")  # fmt: skip
    return 1 if errors or result.errors else 0


def _space_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "space", help="the spaces' lifecycle (one sweep)", description="The person's space (docs/lifecycle.md)."
    )
    commands = p.add_subparsers(title="space commands", metavar="COMMAND")
    sweep = commands.add_parser(
        "sweep",
        help="create the spaces whose opposition period is over, destroy those past retention",
        description="One pass of what the server does every space_sweep_seconds: pending spaces whose "
        "opposition period is over become created; closed spaces past their retention are destroyed.",
    )
    sweep.add_argument("--store", help="store URL (default sqlite:///./data/fhir.db; env FHIR_SERVER_STORE)")
    sweep.add_argument("--base-url", help="this server's public base URL, named in the trace")
    sweep.set_defaults(func=space_sweep)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def space_sweep(args: argparse.Namespace) -> int:
    import asyncio

    from .auth.state import default_state_url, open_auth_state
    from .space.clock import CLOCK
    from .space.sweep import sweep
    from .store import open_store

    settings = load_settings(**_overrides(args))
    require_store(settings.store)

    url = settings.auth_state or default_state_url(settings.store)
    accounts = open_auth_state(url, write_concern=settings.mongo_write_concern) if _auth_state_exists(url) else None

    async def main() -> dict:
        async with open_store(settings.store, write_concern=settings.mongo_write_concern) as store:
            return await sweep(store, settings, CLOCK.now(), accounts)

    try:
        done = asyncio.run(main())
    finally:
        if accounts is not None:
            accounts.close()
    print(f"{done['created']} space(s) created, {done['destroyed']} destroyed")
    return 0


def _auth_state_exists(url: str) -> bool:
    """An auth state to clean up with the destroyed spaces (none: the server ran without authentication)."""
    from .auth.state import MissingAuthState, require_auth_state

    try:
        require_auth_state(url)
    except MissingAuthState:
        return False
    return True


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    fields = ("host", "port", "store", "workers", "base_url", "log_level")
    found: dict[str, object] = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    if getattr(args, "auth", None) is not None:
        found["auth"] = args.auth == "on"
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = _overrides(args)
    settings = load_settings(**overrides)
    if not settings.auth:
        if not _is_loopback(settings.host):
            print(
                f"refused: --auth off serves health data without authentication; it is accepted only on a "
                f"loopback address, not {settings.host!r}",
                file=sys.stderr,
            )
            return 2
        warning = "WARNING: authentication is OFF: every local process can read and write all data (development only)"
        print(f"\n{'!' * len(warning)}\n{warning}\n{'!' * len(warning)}\n", file=sys.stderr, flush=True)
    # Workers are separate processes that rebuild Settings from the environment: hand the flags on.
    for name, value in overrides.items():
        os.environ[f"FHIR_SERVER_{name.upper()}"] = str(value)
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"fhir-server {__version__}: FHIR R4 base URL http://{shown_host}:{settings.port}", flush=True)
    print(f"store: {_redact(settings.store)}", flush=True)
    uvicorn.run(
        "fhir_server.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # URLs carry identifiers (INS…): health data stays out of the logs
        proxy_headers=True,
    )
    return 0


class MissingStore(Exception):
    """An administration command found no database where it looked."""


def require_store(url: str) -> None:
    """``reindex`` works on existing data: a SQLite URL naming no file is a mistake (wrong directory), not a
    new database to create."""
    from pathlib import Path

    from .store import sqlite_path

    if url.startswith("sqlite:") and not Path(sqlite_path(url)).is_file():
        raise MissingStore(f"no database at {Path(sqlite_path(url)).resolve()}")


def _redact(url: str) -> str:
    """Never print credentials of a store URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhir-server",
        description="FHIR R4 health-data server (Mon espace santé model).",
    )
    parser.add_argument("--version", action="version", version=f"fhir-server {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _serve_parser(sub)
    _reindex_parser(sub)
    _load_parser(sub)
    _matrix_parser(sub)
    _audit_parser(sub)
    _patients_parser(sub)
    _space_parser(sub)
    from .auth.cli import add_commands as add_auth_commands  # users, clients, token, launch, keys

    add_auth_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"fhir-server: {problem}", file=sys.stderr)
        return 2
    except (MissingAuthState, MissingStore) as exc:
        hint = (
            "; --init creates a new one, whose tokens only a server using it will accept"
            if isinstance(exc, MissingAuthState)
            else ""
        )
        print(
            f"fhir-server: {exc} (relative paths are resolved against {os.getcwd()}): run the command where the "
            "server's data directory is, or name it with --store / FHIR_SERVER_STORE (FHIR_SERVER_AUTH_STATE for "
            f"the auth state){hint}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
