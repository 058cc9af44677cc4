"""Unit tests for the pure target and header functions (no servers)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.errors import BadRequest, ForbiddenTarget
from proxy.forward import one_spelling, upstream_url
from proxy.routing import (
    HOP_BY_HOP,
    Target,
    connection_header_names,
    credential_fingerprint,
    downstream_response_headers,
    first_segment,
    is_upload_route,
    parse_target,
    upstream_request_headers,
)

SPECS = Path(__file__).resolve().parents[3] / "shared" / "apideck-openapi"
UPLOAD_HOST = "upload.apideck.com"
OWN = {"127.0.0.1:8475", "localhost:8475"}

# The operations the published specs serve from upload.apideck.com (operation-level `servers:`).
UPLOAD_ROUTES = [
    ("POST", "/file-storage/files"),
    ("POST", "/file-storage/upload-sessions"),
    ("GET", "/file-storage/upload-sessions/{id}"),
    ("PUT", "/file-storage/upload-sessions/{id}"),
    ("POST", "/file-storage/upload-sessions/{id}/finish"),
    ("POST", "/accounting/attachments/{reference_type}/{reference_id}"),
]
NOT_UPLOAD = [
    ("GET", "/file-storage/files"),
    ("PUT", "/file-storage/files"),
    ("GET", "/file-storage/files/f1"),
    ("POST", "/file-storage/files/search"),
    ("POST", "/file-storage/files/f1/copy"),
    ("DELETE", "/file-storage/upload-sessions/s1"),
    ("PATCH", "/file-storage/upload-sessions/s1"),
    ("GET", "/file-storage/upload-sessions/s1/finish"),
    ("POST", "/file-storage/upload-sessions/s1/finish/extra"),
    ("GET", "/accounting/attachments/invoice/inv-1"),
    ("POST", "/accounting/attachments/invoice"),
    ("POST", "/accounting/attachments/invoice/inv-1/extra"),
    ("POST", "/crm/contacts"),
    ("POST", "/file-storage/files/"),
    ("post", "/file-storage/files"),
]


def fill(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-id_1", template)


@pytest.mark.parametrize(("method", "template"), UPLOAD_ROUTES)
def test_upload_routes_from_the_table(method: str, template: str) -> None:
    """Each upload-host operation of the published spec routes to the upload upstream."""
    assert is_upload_route(method, fill(template))
    assert is_upload_route(method, template.replace("{id}", "a%2Fb").replace("{reference_id}", "x"))


@pytest.mark.parametrize(("method", "path"), NOT_UPLOAD)
def test_other_routes_stay_on_unify(method: str, path: str) -> None:
    """Neighbouring paths and other methods on upload paths stay on the unify upstream."""
    assert not is_upload_route(method, path)


def _spec_operations() -> list[tuple[str, str, bool]]:
    yaml = pytest.importorskip("yaml")
    ops = []
    for spec_file in sorted(SPECS.glob("*.yml")):
        spec = yaml.load(
            spec_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
        for path, item in (spec.get("paths") or {}).items():
            path_servers = item.get("servers")
            for method, op in item.items():
                if method not in {"get", "put", "post", "patch", "delete", "head", "options"}:
                    continue
                servers = op.get("servers") or path_servers or []
                upload = any(UPLOAD_HOST in s.get("url", "") for s in servers)
                ops.append((method.upper(), path, upload))
    return ops


@pytest.mark.skipif(not SPECS.is_dir(), reason="the shared Apideck specs are not beside the repo")
def test_upload_routes_match_the_published_specs() -> None:
    """is_upload_route agrees with every operation of every spec, and the table matches them."""
    ops = _spec_operations()
    assert len(ops) > 100
    assert sorted((m, p) for m, p, upload in ops if upload) == sorted(UPLOAD_ROUTES)
    wrong = [(m, p) for m, p, upload in ops if is_upload_route(m, fill(p)) != upload]
    assert wrong == []


def test_parse_target_keeps_origin_form_bytes() -> None:
    """An origin-form target splits into path and raw query without any decoding."""
    raw = "/a%2Fb/c%20d;x?q=%2F%20+%25&q=&flag&=v&u=%u00e9"
    target = parse_target(raw, OWN)
    assert target == Target("/a%2Fb/c%20d;x", "q=%2F%20+%25&q=&flag&=v&u=%u00e9")
    assert target.raw == raw
    assert parse_target("/plain", OWN) == Target("/plain", "")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://127.0.0.1:8475/crm/x?a=1", Target("/crm/x", "a=1")),
        ("http://LOCALHOST:8475/crm/x%2Fy", Target("/crm/x%2Fy", "")),
        ("http://localhost:8475", Target("/", "")),
        ("http://localhost:8475?a=b", Target("/", "a=b")),
    ],
)
def test_absolute_form_naming_the_proxy_is_accepted(raw: str, expected: Target) -> None:
    """RFC 9112 §3.2.2: absolute-form naming this proxy is served as its origin-form."""
    assert parse_target(raw, OWN) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "http://evil.example/x",
        "https://unify.apideck.com/crm/contacts",
        "http://127.0.0.1:8476/x",
        "http://user@127.0.0.1:8475/x",
    ],
)
def test_absolute_form_naming_another_host_is_forbidden(raw: str) -> None:
    """Absolute-form naming any other authority is refused: not an open proxy."""
    with pytest.raises(ForbiddenTarget):
        parse_target(raw, OWN)


@pytest.mark.parametrize(
    "raw", ["*", "", "evil.example:443", "ftp://127.0.0.1:8475/x", "http:///x"]
)
def test_unsupported_targets_are_bad_requests(raw: str) -> None:
    """Asterisk-form, authority-form and non-HTTP absolute targets are 400s."""
    with pytest.raises(BadRequest):
        parse_target(raw, OWN)


def test_first_segment() -> None:
    """The unified API is the first path segment."""
    assert first_segment("/crm/contacts/1") == "crm"
    assert first_segment("/vault") == "vault"
    assert first_segment("/") == ""


def _incoming(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_headers_drop_hop_by_hop_listed_and_host_keep_order() -> None:
    """Hop-by-hop, Connection-listed and Host go; the rest keep order, case and repeats."""
    incoming = _incoming(
        [
            ("Host", "proxy:8475"),
            ("X-A", "1"),
            ("Connection", "keep-alive, X-Listed"),
            ("Connection", "x-also-listed"),
            ("X-Listed", "drop"),
            ("x-also-listed", "drop"),
            *[(name.title(), "v") for name in sorted(HOP_BY_HOP)],
            ("x-a", "2"),
            ("Cookie", "c=1"),
        ]
    )
    out = upstream_request_headers(incoming, api_key=None, app_id=None)
    assert list(out.items()) == [("X-A", "1"), ("x-a", "2"), ("Cookie", "c=1")]


def test_configured_credentials_fill_in_only_when_absent() -> None:
    """The configured API key and app id are added only when the client sent none."""
    out = upstream_request_headers(_incoming([("X", "1")]), api_key="sk", app_id="app")
    assert list(out.items()) == [
        ("X", "1"),
        ("Authorization", "Bearer sk"),
        ("x-apideck-app-id", "app"),
    ]
    own = _incoming([("authorization", "Basic mine"), ("X-APIDECK-APP-ID", "mine")])
    out = upstream_request_headers(own, api_key="sk", app_id="app")
    assert list(out.items()) == [("authorization", "Basic mine"), ("X-APIDECK-APP-ID", "mine")]


def test_response_headers_drop_hop_by_hop_and_framing() -> None:
    """Response hop-by-hop fields, Connection-listed names and Content-Length are removed."""
    incoming = _incoming(
        [
            ("Set-Cookie", "a=1"),
            ("Connection", "close, X-Private"),
            ("X-Private", "x"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("Proxy-Authenticate", "Basic"),
            ("Set-Cookie", "b=2"),
            ("ETag", '"v"'),
        ]
    )
    out = downstream_response_headers(incoming)
    assert list(out.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("ETag", '"v"')]


def test_connection_header_names_reads_every_connection_field() -> None:
    """Every Connection field's comma-separated tokens are collected, lower-cased."""
    incoming = _incoming([("Connection", " A, b ,,"), ("connection", "C")])
    assert connection_header_names(incoming) == {"a", "b", "c"}
    assert connection_header_names({"Connection": "X-Y"}) == {"x-y"}


def test_credential_fingerprint_is_short_stable_and_one_way() -> None:
    """The fingerprint distinguishes callers without containing the key."""
    a = credential_fingerprint("Bearer sk_live_secret")
    assert a == credential_fingerprint("Bearer sk_live_secret")
    assert a != credential_fingerprint("Bearer sk_live_other")
    assert len(a) == 16
    assert "secret" not in a
    assert credential_fingerprint(None) == credential_fingerprint("") == "none"


def test_one_spelling_keeps_repeats_for_the_client_library() -> None:
    """Repeated names are spelled like their first occurrence; values and order are kept."""
    headers = CIMultiDict([("X-Multi", "1"), ("A", "a"), ("x-multi", "2"), ("X-MULTI", "3")])
    assert list(one_spelling(headers).items()) == [
        ("X-Multi", "1"),
        ("A", "a"),
        ("X-Multi", "2"),
        ("X-Multi", "3"),
    ]
    same: CIMultiDict[str] = CIMultiDict([("A", "1"), ("A", "2")])
    assert one_spelling(same) is same


def test_upstream_url_keeps_the_target_encoded() -> None:
    """The upstream URL carries the client's path and query exactly, escapes included."""
    target = Target("/a%2Fb/./c/../%7e", "x=%2F%20+%25&x=&k")
    url = upstream_url(URL("http://upstream:1"), target)
    assert url.raw_path_qs == "/a%2Fb/./c/../%7e?x=%2F%20+%25&x=&k"
    assert url.origin() == URL("http://upstream:1")
