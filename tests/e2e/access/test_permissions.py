"""Every caller x every endpoint x own / other / missing knowledge base, against the real server.

The table below is the specification, written out here rather than read from app.access.roles, so that a
wrong entry in the product's table fails. To cover a new endpoint add one `Endpoint` row: `{kb}` in the
path or anywhere in the body is replaced by the knowledge base under test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.access.conftest import (
    ADMIN,
    EDITOR,
    EMPLOYEE_A,
    EXPIRED,
    REVOKED,
    SERVICE,
    LiveServer,
    assert_error_shape,
)

pytestmark = pytest.mark.e2e

# What each role may do (the table). None: the endpoint is open to everyone.
ASK, SEARCH, FEEDBACK, READ_DOCS, WRITE_DOCS = "ask", "search", "feedback", "read_documents", "write_documents"
MANAGE_KEYS, MANAGE_KBS, READ_AUDIT = "manage_keys", "manage_kbs", "read_audit"
SIGNED_IN = "signed_in"  # any valid key, whatever its role
_EMPLOYEE = {ASK, SEARCH, FEEDBACK, READ_DOCS}
ROLE_PERMISSIONS: dict[str, set[str]] = {
    "admin": {*_EMPLOYEE, WRITE_DOCS, MANAGE_KEYS, MANAGE_KBS, READ_AUDIT},
    "editor": {*_EMPLOYEE, WRITE_DOCS},
    "employee": _EMPLOYEE,
    "service": {ASK, SEARCH},
}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: dict[str, Any] | None = None
    permission: str | None = None  # None: public
    # Whether the request names a knowledge base (in the path or body, as {kb}) that the key must be granted.
    kb_scoped: bool = False
    ok: int = 200
    # What a caller granted every knowledge base gets for one that does not exist (None: `ok`).
    missing_kb: int | None = None
    # Errors in OpenAI's shape (the /v1 routes) rather than kb's.
    openai: bool = False

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}" + (" stream" if (self.body or {}).get("stream") else "")

    def request(self, kb: str) -> tuple[str, str, Any]:
        body = json.loads(json.dumps(self.body).replace("{kb}", kb)) if self.body is not None else None
        return self.method, self.path.replace("{kb}", kb), body


ENDPOINTS = [
    Endpoint("POST", "/ask", {"question": "What is the budget of project GARNET-3624?", "kb": "{kb}"}, ASK, True),
    Endpoint("POST", "/ask", {"question": "Who leads GARNET-3624?", "kb": "{kb}", "stream": True}, ASK, True),
    Endpoint("POST", "/search", {"query": "garnet laptops", "kb": "{kb}", "mode": "bm25"}, SEARCH, True),
    Endpoint("GET", "/healthz"),
    Endpoint("GET", "/readyz"),
    # Only liveness, readiness and the UI's own routes are open; the API's docs need a key too.
    Endpoint("GET", "/docs", permission=SIGNED_IN),
    Endpoint("GET", "/openapi.json", permission=SIGNED_IN),
    Endpoint("GET", "/me", permission=SIGNED_IN),
    Endpoint("GET", "/admin/keys", permission=MANAGE_KEYS),
    # An empty body: admins get as far as validation (422), nobody else gets that far.
    Endpoint("POST", "/admin/keys", {}, MANAGE_KEYS, ok=422),
    Endpoint("POST", "/admin/keys/nobody-such/revoke", permission=MANAGE_KEYS, ok=404),
    Endpoint("GET", "/admin/kbs", permission=MANAGE_KBS),
    Endpoint("POST", "/admin/kbs", {}, MANAGE_KBS, ok=422),
    Endpoint("PATCH", "/admin/kbs/no_such_kb_42", {"description": "x"}, MANAGE_KBS, ok=404),
    Endpoint("GET", "/admin/audit", permission=READ_AUDIT),
    # Documents: the kb is a query parameter (or, for uploads, a form field; a JSON body gets as far as
    # the multipart check, 400, for writers). Ids that exist nowhere: 404 once past role and grant.
    Endpoint("POST", "/documents", {}, WRITE_DOCS, ok=400),
    Endpoint("GET", "/documents?kb={kb}", permission=READ_DOCS, kb_scoped=True),
    Endpoint("GET", "/documents/no/such-doc.md?kb={kb}", permission=READ_DOCS, kb_scoped=True, ok=404),
    Endpoint("GET", "/documents/no/such-doc.md/versions?kb={kb}", permission=READ_DOCS, kb_scoped=True, ok=404),
    Endpoint("GET", "/documents/no/such-doc.md/file?kb={kb}", permission=READ_DOCS, kb_scoped=True, ok=404),
    Endpoint("PUT", "/documents/no/such-doc.md?kb={kb}", {}, WRITE_DOCS, kb_scoped=True, ok=400),
    Endpoint("PATCH", "/documents/no/such-doc.md?kb={kb}", {"groups": ["a"]}, WRITE_DOCS, kb_scoped=True, ok=404),
    Endpoint("DELETE", "/documents/no/such-doc.md?kb={kb}", permission=WRITE_DOCS, kb_scoped=True, ok=404),
    Endpoint("POST", "/documents/no/such.md/versions/1/restore?kb={kb}", None, WRITE_DOCS, kb_scoped=True, ok=404),
    Endpoint("GET", "/jobs?kb={kb}", permission=READ_DOCS, kb_scoped=True),
    Endpoint("GET", "/jobs", permission=READ_DOCS),
    Endpoint("GET", "/jobs/no-such-job", permission=READ_DOCS, ok=404),
    Endpoint("GET", "/jobs/no-such-job/events", permission=READ_DOCS, ok=404),
    Endpoint("POST", "/feedback", {"answer_id": "no-such-answer", "rating": "up"}, FEEDBACK, ok=404),
    Endpoint("GET", "/admin/feedback", permission=READ_AUDIT),
    Endpoint("GET", "/admin/feedback?format=jsonl", permission=READ_AUDIT),
    Endpoint("GET", "/no-such-route", permission=SIGNED_IN, ok=404),
    Endpoint("GET", "/metrics", permission=READ_AUDIT),  # admins only (unless made public by setting)
    Endpoint("GET", "/v1/models", permission=ASK, openai=True),
    Endpoint(
        "POST",
        "/v1/chat/completions",
        {"model": "{kb}", "messages": [{"role": "user", "content": "Who leads GARNET?"}]},
        ASK,
        True,
        missing_kb=404,
        openai=True,
    ),
]


@dataclass(frozen=True)
class Caller:
    name: str
    role: str | None  # None: no valid key
    kbs: tuple[str, ...] = ()

    def headers(self, live: LiveServer) -> dict[str, str]:
        if self.name == "no-key":
            return {}
        if self.name in BAD_HEADERS:
            return BAD_HEADERS[self.name]
        return live.headers(live.key(self.name))


BAD_HEADERS = {
    "unknown-key": {"Authorization": "Bearer kb_000000000000_" + "x" * 43},
    "malformed-key": {"Authorization": "Bearer not-a-key"},
    "x-api-key-unknown": {"X-API-Key": "kb_deadbeef0000_nope"},
    "basic-auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
}
CALLERS = [
    Caller(ADMIN, "admin", ("*",)),
    Caller(EDITOR, "editor", ("default",)),
    Caller(EMPLOYEE_A, "employee", ("default",)),
    Caller(SERVICE, "service", ("default",)),
    Caller("no-key", None),
    *(Caller(name, None) for name in BAD_HEADERS),
    Caller(EXPIRED, None),
    Caller(REVOKED, None),
]
# own: granted to every key; other: exists, granted to admins only here; missing: exists nowhere.
KBS = {"own": "default", "other": "secret", "missing": "no_such_kb_42"}


def expected_status(endpoint: Endpoint, caller: Caller, kb: str) -> int:
    if endpoint.permission is None:
        return endpoint.ok
    if caller.role is None:
        return 401
    if endpoint.permission != SIGNED_IN and endpoint.permission not in ROLE_PERMISSIONS[caller.role]:
        return 403
    if endpoint.kb_scoped and "*" not in caller.kbs and kb not in caller.kbs:
        return 403
    if endpoint.missing_kb is not None and kb == KBS["missing"]:
        return endpoint.missing_kb
    return endpoint.ok


CASES = [
    pytest.param(e, c, which, id=f"{e.id}-{c.name}-{which}")
    for e in ENDPOINTS
    for c in CALLERS
    for which in (KBS if e.kb_scoped else {"own": "default"})
]


@pytest.mark.parametrize(("endpoint", "caller", "which"), CASES)
def test_permission_matrix(
    live: LiveServer, client: httpx.Client, endpoint: Endpoint, caller: Caller, which: str
) -> None:
    kb = KBS[which]
    method, path, body = endpoint.request(kb)
    response = client.request(method, path, json=body, headers=caller.headers(live))
    want = expected_status(endpoint, caller, kb)
    assert response.status_code == want, (response.status_code, response.text[:500])
    if want >= 400 and endpoint.openai:
        error = response.json()["error"]
        kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
        assert error["type"] == kinds[want] and error["message"], error
        if want == 401:
            assert response.headers["www-authenticate"] == "Bearer"
    elif want >= 400:
        error = assert_error_shape(response)
        codes = {
            400: "invalid_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            422: "invalid_request",
        }
        assert error["code"] == codes[want], error
        if want == 401:
            assert response.headers["www-authenticate"] == "Bearer"


def test_the_same_403_whether_the_knowledge_base_exists_or_not(live: LiveServer, client: httpx.Client) -> None:
    """Probing kb names must not tell which exist: the refusal differs only in the name echoed back."""
    headers = live.headers(live.key(EMPLOYEE_A))
    for endpoint in (e for e in ENDPOINTS if e.kb_scoped and not e.openai):
        refusals = {}
        for which in ("other", "missing"):
            method, path, body = endpoint.request(KBS[which])
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 403, r.text
            error = assert_error_shape(r)
            refusals[which] = (error["code"], error["message"].replace(KBS[which], "<kb>"), sorted(r.headers.keys()))
        assert refusals["other"] == refusals["missing"], refusals


def test_unknown_expired_and_revoked_keys_get_the_same_401(live: LiveServer, client: httpx.Client) -> None:
    """No oracle for whether a key exists, has expired or was revoked."""
    body = {"question": "What is the budget of project GARNET-3624?"}
    answers = set()
    for name in (EXPIRED, REVOKED, "unknown-key", "malformed-key", "x-api-key-unknown"):
        headers = Caller(name, None).headers(live)
        r = client.post("/ask", json=body, headers=headers)
        assert r.status_code == 401, (name, r.text)
        error = assert_error_shape(r)
        answers.add((error["code"], error["message"]))
    assert len(answers) == 1, answers


def test_readyz_shows_components_to_admins_only(live: LiveServer, client: httpx.Client) -> None:
    admin = client.get("/readyz", headers=live.headers(live.key(ADMIN))).json()
    # The model server is a closed port; what answers need is up (no worker in this API).
    expected = {"database": "up", "milvus": "up", "embedder": "up", "llm": "down"}
    assert admin["components"] == expected and "base_url" in admin["llm"]
    for name in (EMPLOYEE_A, SERVICE, EDITOR, "no-key", "unknown-key", REVOKED):
        body = client.get("/readyz", headers=Caller(name, None).headers(live)).json()
        assert body == {"status": "degraded"}, (name, body)
