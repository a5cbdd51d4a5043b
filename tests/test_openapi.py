"""The OpenAPI document made from the CapabilityStatement (``/openapi.json``) and its page (``/docs``).

Also the plain regression tests of the bugs the schemathesis fuzz test (tests/test_openapi_fuzz.py) found.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from conftest import FHIR_BASE, fhir_client

from fhir_server.interactions.capabilities import capability_statement
from fhir_server.rest.openapi import _built, build, openapi_document

FHIR = "application/fhir+json"
# Interaction code → (method, path) of the document, for type T (http.html).
INTERACTION_PATHS = {
    "read": [("get", "/{T}/{id}")],
    "vread": [("get", "/{T}/{id}/_history/{vid}")],
    "update": [("put", "/{T}/{id}")],
    "patch": [("patch", "/{T}/{id}"), ("patch", "/{T}")],
    "delete": [("delete", "/{T}/{id}")],
    "history-instance": [("get", "/{T}/{id}/_history")],
    "history-type": [("get", "/{T}/_history")],
    "create": [("post", "/{T}")],
    "search-type": [("get", "/{T}"), ("post", "/{T}/_search")],
}
OPERATION_PATHS = {
    "validate": [("post", "/{T}/$validate"), ("post", "/{T}/{id}/$validate")],
    "meta": [("get", "/{T}/{id}/$meta"), ("get", "/{T}/{id}/_history/{vid}/$meta")],
    "meta-add": [("post", "/{T}/{id}/$meta-add"), ("post", "/{T}/{id}/_history/{vid}/$meta-add")],
    "meta-delete": [("post", "/{T}/{id}/$meta-delete"), ("post", "/{T}/{id}/_history/{vid}/$meta-delete")],
    "everything": [("get", "/{T}/{id}/$everything")],
    "mask-documents": [("post", "/{T}/{id}/$mask-documents")],
    "activity": [("get", "/{T}/{id}/$activity")],
    "notification-preferences": [("get", "/{T}/{id}/$notification-preferences"),
                                 ("post", "/{T}/{id}/$notification-preferences")],
    "registry-import": [("post", "/{T}/$registry-import")],
    "close": [("post", "/{T}/{id}/$close")],
    "reopen": [("post", "/{T}/{id}/$reopen")],
    "invite-delegate": [("post", "/{T}/{id}/$invite-delegate")],
    "revoke": [("post", "/{T}/{id}/$revoke")],
    "summary": [("get", "/{T}/{id}/$summary")],
    "lastn": [("get", "/{T}/$lastn")],
    "move": [("post", "/{T}/{id}/$move")],
    "mark-read": [("post", "/{T}/{id}/$mark-read")],
    "mark-unread": [("post", "/{T}/{id}/$mark-unread")],
    "trash": [("post", "/{T}/{id}/$trash")],
    "restore": [("post", "/{T}/{id}/$restore")],
    "close-thread": [("post", "/{T}/{id}/$close-thread")],
    "file-attachment": [("post", "/{T}/{id}/$file-attachment")],
    "contacts": [("get", "/{T}/{id}/$contacts")],
}  # fmt: skip
SYSTEM_PATHS = {
    "search-system": [("get", "/"), ("post", "/_search")],
    "history-system": [("get", "/_history")],
    "transaction": [("post", "/")],
    "batch": [("post", "/")],
}


@contextlib.asynccontextmanager
async def secured_app(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app with SMART authorization on (its own authorization server, keys beside the store)."""
    async with fhir_client(f"sqlite:///{tmp_path / 'fhir.db'}", auth=True, base_url=FHIR_BASE) as c:
        yield c


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with fhir_client(f"sqlite:///{tmp_path / 'fhir.db'}") as c:
        yield c


def assert_outcome(response: httpx.Response, status: int, text: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"], outcome
    if text:
        assert text in str(outcome), outcome
    return outcome


def parameter_names(document: dict, operation: dict, path_item: dict) -> set[str]:
    names = set()
    for parameter in [*path_item.get("parameters", ()), *operation.get("parameters", ())]:
        if "$ref" in parameter:
            parameter = document["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        names.add(parameter["name"])
    return names


# --- the document ---------------------------------------------------------------------------------------


async def test_document_lists_every_type_interaction_search_parameter_and_operation(client):
    statement = (await client.get("/metadata")).json()
    r = await client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    document = r.json()
    assert document["openapi"].startswith("3.0.")
    assert document["servers"] == [{"url": FHIR_BASE}]
    assert document["info"]["version"] == statement["software"]["version"]
    paths = document["paths"]
    rest = statement["rest"][0]
    tags = {tag["name"] for tag in document["tags"]}
    for resource in rest["resource"]:
        t = resource["type"]
        assert t in tags
        expected = [p for code in (i["code"] for i in resource["interaction"]) for p in INTERACTION_PATHS[code]]
        if resource.get("conditionalUpdate"):
            expected.append(("put", "/{T}"))
        if resource.get("conditionalDelete") in ("single", "multiple"):
            expected.append(("delete", "/{T}"))
        for op in resource.get("operation", ()):
            if op["name"] == "export":
                kickoff = "/{T}/{id}/$export" if t == "Group" else "/{T}/$export"
                expected += [("get", kickoff), ("post", kickoff)]
            else:
                expected += OPERATION_PATHS[op["name"]]
        for method, template in expected:
            path = template.replace("{T}", t)
            assert method in paths.get(path, {}), f"{method.upper()} {path}"
            assert paths[path][method]["tags"] == [t]
        # Exactly those, compartment search aside (an append-only type has no PUT, PATCH or DELETE at all).
        documented = {
            (method, path)
            for path, item in paths.items()
            for method, operation in item.items()
            if method != "parameters" and operation["tags"] == [t] and not path.endswith("/{type}")
        }
        assert documented == {(m, template.replace("{T}", t)) for m, template in expected}, t
        search = paths[f"/{t}"]["get"]
        names = parameter_names(document, search, paths[f"/{t}"])
        wanted = {p["name"] for p in resource.get("searchParam", ())}
        assert wanted <= names, wanted - names
        assert {"_count", "_sort", "_summary", "_elements", "_total", "_format"} <= names
        if resource.get("searchInclude"):
            assert "_include" in names
        if resource.get("searchRevInclude"):
            assert "_revinclude" in names
        # Each search parameter's FHIR type is described.
        for p in resource.get("searchParam", ()):
            described = document["components"]["parameters"][f"{t}.{p['name']}"]
            assert described["x-fhir-search-type"] == p["type"] and p["type"] in described["description"]
        # Conditional update / delete take the same criteria (immutable types, e.g. AuditEvent, have neither).
        if resource.get("conditionalDelete", "not-supported") != "not-supported":
            assert wanted <= parameter_names(document, paths[f"/{t}"]["delete"], paths[f"/{t}"])
        else:
            assert "delete" not in paths[f"/{t}"]
    # Nothing more than the statement: every resource path belongs to a type it lists.
    types = {res["type"] for res in rest["resource"]}
    for path in paths:
        first = path.split("/")[1]
        assert first in types or first in ("", "_search", "_history", "metadata") or first.startswith("$"), path
    for code in (i["code"] for i in rest["interaction"]):
        for method, path in SYSTEM_PATHS[code]:
            assert method in paths[path], f"{method.upper()} {path}"
    system_search = parameter_names(document, paths["/"]["get"], paths["/"])
    assert {p["name"] for p in rest["searchParam"]} <= system_search
    assert {"get", "post"} <= set(paths["/$export"]) and "get" in paths["/$export-status/{job}"]
    assert paths["/metadata"]["get"]["security"] == []
    # Errors: every operation documents its 4xx answers as OperationOutcomes.
    error = document["components"]["responses"]["Error"]["content"][FHIR]["schema"]
    assert error == {"$ref": "#/components/schemas/OperationOutcome"}
    for path, item in paths.items():
        for method, operation in item.items():
            if method != "parameters":
                assert operation["responses"]["4XX"] == {"$ref": "#/components/responses/Error"}, (method, path)
    # Auth off: no security scheme.
    assert "security" not in document and "securitySchemes" not in document["components"]


async def test_request_bodies_are_fhir_json_with_their_resource_type(client):
    document = (await client.get("/openapi.json")).json()
    patient = document["paths"]["/Patient"]["post"]["requestBody"]
    assert patient == {"$ref": "#/components/requestBodies/Patient"}
    body = document["components"]["requestBodies"]["Patient"]
    assert set(body["content"]) == {FHIR, "application/json"}
    schema = document["components"]["schemas"]["Patient"]
    assert schema["required"] == ["resourceType"] and schema["properties"]["resourceType"]["enum"] == ["Patient"]
    patch = document["components"]["requestBodies"]["Patch"]["content"]
    assert set(patch) == {"application/json-patch+json", FHIR}
    transaction = document["paths"]["/"]["post"]["requestBody"]
    assert transaction == {"$ref": "#/components/requestBodies/Bundle"}


def test_document_is_valid_openapi():
    """openapi-spec-validator on a document of a few types that together have every path kind (the full one,
    146 types, takes it 10 s; every type's paths come from the same code), and the rules it would check
    across the full document, checked directly: unique operationIds, declared path parameters, valid
    component names, resolvable references."""
    from openapi_spec_validator import validate

    statement = json.loads(capability_statement("http://fhir.test", smart=True))
    kept = ("Patient", "Observation", "Group", "Binary", "Bundle", "DocumentReference", "Encounter")
    statement["rest"][0]["resource"] = [r for r in statement["rest"][0]["resource"] if r["type"] in kept]
    validate(build(statement))

    document = json.loads(openapi_document("http://fhir.test", smart=True))
    ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items() if m != "parameters"]
    assert len(ids) == len(set(ids)) > 3000
    for kind, components in document["components"].items():
        for name in components:
            assert re.fullmatch(r"[a-zA-Z0-9.\-_]+", name), (kind, name)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            declared = {p["name"] for p in operation.get("parameters", ()) if "$ref" not in p and p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
    refs = set(re.findall(r'"\$ref": ?"#/components/(\w+)/([^"]+)"', json.dumps(document)))
    for kind, name in refs:
        assert name in document["components"][kind], (kind, name)


async def test_openapi_json_docs_and_assets_need_no_token(tmp_path):
    async with secured_app(tmp_path) as c:
        assert (await c.get("/Patient")).status_code == 401  # the data stays behind a token
        r = await c.get("/openapi.json")
        assert r.status_code == 200
        document = r.json()
        smart = (await c.get("/.well-known/smart-configuration")).json()
        for path in ("/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/init.js"):
            assert (await c.get(path)).status_code == 200, path
    # Auth on: the bearer scheme and SMART's flows, with the endpoints of the SMART configuration.
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    flows = schemes["smart"]["flows"]
    assert flows["authorizationCode"]["authorizationUrl"] == smart["authorization_endpoint"]
    assert flows["authorizationCode"]["tokenUrl"] == smart["token_endpoint"]
    assert flows["clientCredentials"]["tokenUrl"] == smart["token_endpoint"]
    assert "system/*.cruds" in flows["clientCredentials"]["scopes"]
    assert document["security"] == [{"bearer": []}, {"smart": []}]
    assert document["paths"]["/metadata"]["get"]["security"] == []


async def test_document_is_built_once_and_served_compressed(client):
    _built.cache_clear()
    openapi_document.cache_clear()
    first = await client.get("/openapi.json", headers={"Accept-Encoding": "identity"})
    second = await client.get("/openapi.json", headers={"Accept-Encoding": "identity"})
    assert first.content == second.content
    assert openapi_document.cache_info().misses == 1 and openapi_document.cache_info().hits >= 1
    # Another base URL (Host) is the same built document with its base put in, not a rebuild.
    other = await client.get("http://other.test:8080/openapi.json", headers={"Accept-Encoding": "identity"})
    assert other.json()["servers"] == [{"url": "http://other.test:8080"}]
    assert _built.cache_info().misses == 1
    assert other.json() == json.loads(json.dumps(build(json.loads(capability_statement("http://other.test:8080")))))
    raw = httpx.Request("GET", f"{FHIR_BASE}/openapi.json", headers={"Accept-Encoding": "gzip"})
    zipped = await client.send(raw, stream=True)
    body = b"".join([chunk async for chunk in zipped.aiter_raw()])
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == first.content and len(body) < len(first.content) / 10


# --- the page -------------------------------------------------------------------------------------------


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href", "data-openapi", "data-redirect"):
            if values.get(name):
                self.urls.append(values[name] or "")
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1


async def test_docs_page_loads_its_assets_from_this_server_only(client):
    r = await client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    page = _Sources()
    page.feed(r.text)
    assert page.inline_scripts == 0  # the CSP forbids them
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/init.js", "/openapi.json"} <= set(page.urls)
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//"), url  # no http://, https://, CDN
        assert "http://" not in url and "https://" not in url
    for url in page.urls:
        asset = await client.get(url)
        assert asset.status_code == 200, url
    assert (await client.get("/docs/swagger-ui-bundle.js")).headers["content-type"].startswith("text/javascript")
    assert (await client.get("/docs/swagger-ui.css")).headers["content-type"].startswith("text/css")
    init = (await client.get("/docs/init.js")).text
    assert "validatorUrl: null" in init  # Swagger UI would otherwise call validator.swagger.io
    assert_outcome(await client.get("/docs/index.j2"), 404)  # only the listed files
    assert_outcome(await client.get("/docs/..%2F..%2Fpyproject.toml"), 404)


# --- regressions found by the fuzz test ----------------------------------------------------------------


@pytest.mark.parametrize("body", [b"null", b"1.5", b"12", b"true", b'"Patient"', b"[]", b"[1.5]"])
async def test_a_json_body_that_is_not_an_object_is_refused_with_400(client, body):
    """Bug: a bare JSON scalar (``null``, ``1.5``…) crashed the JSON reader (TypeError → 500) everywhere a
    body is read: create, update, transaction, $validate, $meta-add, $export."""
    headers = {"Content-Type": FHIR}
    for method, url in [("POST", "/Patient"), ("PUT", "/Patient/p1"), ("POST", "/"), ("POST", "/Patient/$validate"),
                        ("POST", "/Patient/p1/$meta-add"), ("PUT", "/Patient?identifier=x")]:  # fmt: skip
        assert_outcome(await client.request(method, url, content=body, headers=headers), 400)
    kickoff = {**headers, "Prefer": "respond-async"}
    assert_outcome(await client.post("/$export", content=body, headers=kickoff), 400)


@pytest.mark.parametrize("op", [{}, [], 1, None, True])
async def test_json_patch_with_an_op_that_is_not_a_string_is_refused_with_400(client, op):
    """Bug: ``[{"op": {}, …}]`` (an unhashable op) crashed the JSON Patch check (TypeError → 500)."""
    await client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers={"Content-Type": FHIR})
    patch = [{"op": op, "path": "/active", "value": True}]
    headers = {"Content-Type": "application/json-patch+json"}
    for url in ("/Patient/p1", "/Patient?_id=p1"):
        assert_outcome(await client.patch(url, content=json.dumps(patch), headers=headers), 400, "'op' must be")
