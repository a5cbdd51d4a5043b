"""The trace of what leaves the server: an ASGI layer right behind authentication, in front of the read fast
path and the routes, that holds each answer back until the AuditEvents of what it discloses are committed.

Why here and not in each interaction: this is the one place that sees exactly what a caller receives, by
every path (the fast path, searches and their includes, history, Bundle entries, operations such as
``$everything``, export downloads, error answers). Writes are traced earlier, in their own unit of work
(``RequestTrace`` as a write observer); this layer adds what a write answer discloses beyond what the request
wrote (a conditional create that matched), and traces failures.

Per answer: the resources it carries, grouped by the patient they belong to (one AuditEvent per patient, IHE
BALP), versions as ``Type/id/_history/n``; a search's query (BALP Query entity); the client's X-Request-Id.
Reading the audit log itself (AuditEvent, ``$activity``) is traced as DICOM *Audit Log Used*, naming no
patient; the patient (or their representative) reading their own trail is not traced, so their history does
not fill with their own look-ups.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote

import orjson
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Issue, operation_outcome
from ..fhirjson import dumps
from ..search.patients import patients_of
from ..security.authenticate import ACCESS_KEY, request_audience
from ..validation import R4_RESOURCE_TYPES
from .events import AUDIT_LOG_USED, Actor, build_audit_event, outcome_of_status
from .trace import AuditTrail, RequestTrace

log = logging.getLogger("fhir_server.audit")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TRACE_KEY = "fhir.trace"  # the request's RequestTrace in the ASGI scope (rest.caller adds it as observer)
#: What an answer discloses when its body is not a FHIR answer to parse (the ``$summary`` PDF, its document
#: Bundle): the route puts the stored resources it shows here, and they are traced as a Bundle's entries are.
DISCLOSED_KEY = "fhir.disclosed"
_WRITES = ("POST", "PUT", "PATCH", "DELETE")
_AUDIT_TYPES = frozenset({"AuditEvent"})
_AUDIT_OPERATIONS = frozenset({"activity"})
_UNTRACED_OPERATIONS = frozenset({"export-status"})  # job state only: no patient data
#: Bundles the server builds as answers (their entries are what is disclosed); others are stored resources.
_ANSWER_BUNDLES = frozenset({"searchset", "history", "batch-response", "transaction-response"})


@dataclass(frozen=True, slots=True)
class Target:
    """What a request addresses: the restful interaction, and the resource or operation it names."""

    interaction: str
    type: str | None = None
    id: str | None = None
    operation: str | None = None
    streamed: bool = False  # an export file: traced when the answer starts, not buffered

    @property
    def reference(self) -> str | None:
        """``Type/id`` when the URL names a valid id (a malformed one is refused, and traced without it)."""
        return f"{self.type}/{self.id}" if self.type and self.id and _ID.fullmatch(self.id) else None

    @property
    def audit_log(self) -> bool:
        return self.type in _AUDIT_TYPES or self.operation in _AUDIT_OPERATIONS


def classify(method: str, path: str) -> Target | None:
    """The interaction of ``method path`` (root path removed); None for what carries no data."""
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if not parts:
        return Target("batch" if method == "POST" else "search-system")
    head = parts[0]
    if head.startswith("$"):
        name = head[1:]
        if name in _UNTRACED_OPERATIONS:
            return None
        return Target("operation", operation=name, streamed=name == "export-file")
    if head in ("_history", "_search"):
        return Target("history-system" if head == "_history" else "search-system")
    if head not in R4_RESOURCE_TYPES:
        return None
    write = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if len(parts) == 1:
        return Target(write or "search-type", head)
    second = parts[1]
    if second.startswith("$"):
        return Target("operation", head, operation=second[1:])
    if len(parts) == 2:
        if second == "_search":
            return Target("search-type", head)
        if second == "_history":
            return Target("history-type", head)
        return Target(write or "read", head, second)
    third = parts[2]
    if third.startswith("$"):
        return Target("operation", head, second, operation=third[1:])
    if third == "_history":
        return Target("vread" if len(parts) > 3 else "history-instance", head, second)
    if third in R4_RESOURCE_TYPES:
        return Target("search-compartment", third)
    return Target("operation", head, second)


class AuditMiddleware:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self._state = state

    @property
    def settings(self):
        return self._state.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trail: AuditTrail | None = getattr(self._state, "audit", None)
        access = scope.get(ACCESS_KEY) if scope["type"] == "http" else None
        if trail is None or access is None:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        target = classify(scope["method"], path)
        if target is None:
            await self.app(scope, receive, send)
            return
        trace = RequestTrace(trail, Actor.from_principal(access.principal), request_audience(scope, self._state),
                             target.interaction, address=_client(scope), request_id=_request_id(scope))  # fmt: skip
        scope[TRACE_KEY] = trace
        answer = _Answer(self, trace, target, scope, send)
        await self.app(scope, answer.receive_from(receive), answer.send)

    async def record(self, trace: RequestTrace, target: Target, scope: Scope, status: int, body: bytes | None,
                     form: bytes) -> None:  # fmt: skip
        events = await self._events(trace, target, scope, status, body, form)
        if events:
            await trace.trail.commit(events)

    async def _events(self, trace: RequestTrace, target: Target, scope: Scope, status: int, body: bytes | None,
                      form: bytes) -> list[dict]:  # fmt: skip
        outcome = outcome_of_status(status)
        query = _query(scope, target, form)
        interaction = target.interaction
        disclosed = scope.get(DISCLOSED_KEY)
        if status < 400 and disclosed is not None:
            resources = list(disclosed)
        else:
            resources = _resources(body) if status < 400 and body else []
        if interaction == "batch":
            interaction = _bundle_interaction(resources, form)
            form = b""
        resources = [r for r in _flatten(resources) if (r.get("resourceType"), r.get("id")) not in trace.wrote]
        if status < 400 and trace.wrote and not resources:
            return []  # every write is traced in its own unit of work; the answer discloses nothing more
        operation = target.operation
        details = (("file", scope["path"].rsplit("/", 1)[-1]),) if target.streamed else ()
        if target.audit_log:
            if _patient_side(trace.actor):
                return []  # a patient reading their own trail: no health data, and their history stays theirs
            return [build_audit_event(trace.access(interaction, outcome=outcome, operation=operation, query=query,
                                                   event_type=AUDIT_LOG_USED))]  # fmt: skip
        disclosed_by_write = scope["method"] in _WRITES and resources and interaction not in ("batch", "transaction")
        action = "R" if disclosed_by_write else None  # e.g. a conditional create that matched
        groups = await self._by_patient(trace, target, resources, body) if status < 400 else {}
        if not groups:
            named = [target.reference] if target.reference and status < 500 else []
            groups = {None: named}
        events = []
        for patient, refs in groups.items():
            access = trace.access(interaction, outcome=outcome, operation=operation, query=query, action=action,
                                  patients=[patient] if patient else (), resources=refs, details=details)  # fmt: skip
            events.append(build_audit_event(access))
        return events

    async def _by_patient(self, trace: RequestTrace, target: Target, resources: list[dict], body: bytes | None
                          ) -> dict[str | None, list[str]]:  # fmt: skip
        groups: dict[str | None, list[str]] = {}
        if target.type == "Binary" and target.id and body is not None and not resources:
            resources = await self._stored_binary(trace, target.id)  # raw content answered: find whose it is
        for resource in resources:
            ref = _versioned(resource)
            if ref is None:
                continue
            patients = patients_of(resource, trace.base) or await self._context_patients(trace, resource)
            for patient in patients or [None]:
                groups.setdefault(patient, []).append(ref)
        return groups

    async def _stored_binary(self, trace: RequestTrace, id_: str) -> list[dict]:
        found = await trace.trail.store.read_current("Binary", id_)
        return [orjson.loads(found.body)] if found is not None and found.body else []

    async def _context_patients(self, trace: RequestTrace, resource: dict) -> list[str]:
        """A Binary belongs to the patient of its securityContext (a DocumentReference, usually)."""
        if resource.get("resourceType") != "Binary":
            return []
        reference = (resource.get("securityContext") or {}).get("reference") or ""
        if reference.startswith(trace.base):
            reference = reference[len(trace.base) :].lstrip("/")
        type_, _, id_ = reference.partition("/")
        if type_ not in R4_RESOURCE_TYPES or not id_ or "/" in id_:
            return []
        if type_ == "Patient":
            return [id_]
        found = await trace.trail.store.read_current(type_, id_)
        return patients_of(orjson.loads(found.body), trace.base) if found is not None and found.body else []


class _Answer:
    """The app's answer, held back until its trace is committed (an export file: traced when it starts)."""

    def __init__(self, owner: AuditMiddleware, trace: RequestTrace, target: Target, scope: Scope, send: Send):
        self.owner, self.trace, self.target, self.scope, self._send = owner, trace, target, scope, send
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.form = b""
        self.json = True
        self.withheld = False

    def receive_from(self, receive: Receive) -> Receive:
        # POST _search: its parameters are the query to trace; POST [base]: a batch or a transaction?
        if self.scope["method"] != "POST" or self.target.interaction not in ("search-type", "search-system", "batch"):
            return receive
        keep = 65536 if self.target.interaction.startswith("search") else self.owner.settings.max_body_bytes

        async def kept() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(self.form) < keep:
                self.form += message.get("body", b"")
            return message

        return kept

    async def send(self, message: Message) -> None:
        if self.withheld:
            return  # the rest of an answer whose trace failed: never sent
        if message["type"] == "http.response.start":
            self.start = message
            content_type = next((v for k, v in message.get("headers", ()) if k == b"content-type"), b"")
            self.json = b"json" in content_type
            if self.target.streamed and await self._traced(message["status"], None):
                await self._send(message)
            return
        if message["type"] != "http.response.body" or self.target.streamed:
            await self._send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        assert self.start is not None
        body = b"".join(self.chunks)
        if await self._traced(self.start["status"], body if self.json else (b"" if body else None)):
            await self._send(self.start)
            await self._send({"type": "http.response.body", "body": body})

    async def _traced(self, status: int, body: bytes | None) -> bool:
        """Commit the answer's trace; if that fails, a 503 goes out instead of the answer (no data untraced)."""
        try:
            await self.owner.record(self.trace, self.target, self.scope, status, body, self.form)
        except Exception as exc:
            log.error("audit trail unavailable, answer withheld: %s", type(exc).__name__)
            self.withheld = True
            outcome = dumps(operation_outcome([Issue("transient", "The access could not be traced: retry later")]))
            headers = [(b"content-type", b"application/fhir+json; charset=utf-8"),
                       (b"content-length", str(len(outcome)).encode()), (b"retry-after", b"5")]  # fmt: skip
            await self._send({"type": "http.response.start", "status": 503, "headers": headers})
            await self._send({"type": "http.response.body", "body": outcome})
            return False
        return True


def _patient_side(actor: Actor) -> bool:
    return actor.professional is None and (actor.fhir_user or "").split("/", 1)[0] in ("Patient", "RelatedPerson")


def _bundle_interaction(answer: list[dict], request: bytes) -> str:
    """``batch`` or ``transaction``: from the answer's Bundle type, else (a refused Bundle) the request's."""
    if answer and answer[0].get("resourceType") == "Bundle":
        return "transaction" if answer[0].get("type") == "transaction-response" else "batch"
    try:
        sent = orjson.loads(request)
    except orjson.JSONDecodeError:
        return "batch"
    return "transaction" if isinstance(sent, dict) and sent.get("type") == "transaction" else "batch"


def _resources(body: bytes) -> list[dict]:
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    return [found] if isinstance(found, dict) and found.get("resourceType") else []


def _flatten(resources: list[dict]) -> list[dict]:
    """The resources an answer carries: a Bundle's entries (nested Bundles too), a Parameters' resources."""
    out: list[dict] = []
    for resource in resources:
        kind = resource.get("resourceType")
        if kind == "Bundle" and resource.get("type") in _ANSWER_BUNDLES:
            out += _flatten([e["resource"] for e in resource.get("entry") or () if isinstance(e.get("resource"), dict)])
        elif kind == "Parameters":
            out += _flatten(_parameter_resources(resource.get("parameter") or ()))
        elif kind != "OperationOutcome":
            out.append(resource)
    return out


def _parameter_resources(parameters: list) -> list[dict]:
    found = []
    for p in parameters:
        if isinstance(p.get("resource"), dict):
            found.append(p["resource"])
        found += _parameter_resources(p.get("part") or ())
    return found


def _versioned(resource: dict) -> str | None:
    type_, id_ = resource.get("resourceType"), resource.get("id")
    if not isinstance(type_, str) or not isinstance(id_, str) or type_ not in R4_RESOURCE_TYPES:
        return None
    version = (resource.get("meta") or {}).get("versionId")
    return f"{type_}/{id_}/_history/{version}" if version else f"{type_}/{id_}"


def _query(scope: Scope, target: Target, form: bytes) -> str | None:
    if not target.interaction.startswith("search"):
        return None
    query = scope.get("query_string", b"").decode("latin-1")
    if form:
        query = "&".join(q for q in (query, form.decode("latin-1")) if q)
    return query


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("latin-1")[:200] or None
    return None
