"""
The OpenAPI document generated from Klein routes, and the offline docs page.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from klein import Klein

from buntime.web.api.apps import AppsAPI
from buntime.web.api.core import CoreAPI
from buntime.web.api.openapi import describe, docs_page, openapi_document

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class Sample:
    """A Klein app exercising converters, methods, markup and hints."""

    app = Klein()

    @app.route("/api/things/<int:thing_id>", methods=["GET", "PUT"])
    def thing(self, request: Any, thing_id: int) -> bytes:
        """
        Get or replace a thing.

        The thing is found by C{thing_id}; see L{Sample} and I{never} B{ever}
        guess.

        @param thing_id: ignored in the description
        """
        return b""

    @app.route("/api/files/<path:rest>", methods=["GET"])
    def files(self, request: Any, rest: str) -> bytes:
        return b""

    @app.route("/api/health", methods=["POST"])
    @describe(
        request_body={"content": {"application/json": {"schema": {"type": "object"}}}},
        responses={201: "Created", 409: "Already there", 204: {"description": "Nothing"}},
    )
    def health(self, request: Any) -> bytes:
        """Same endpoint name and path as the core API's health check."""
        return b""

    @app.route("/api/anything")
    def anything(self, request: Any) -> bytes:
        """No methods given: every method."""
        return b""

    @app.route("/api/branch", branch=True)
    def branch(self, request: Any) -> bytes:
        """A branch route."""
        return b""


def klein_apps() -> list[tuple[Klein, object]]:
    return [(CoreAPI.app, CoreAPI), (AppsAPI.app, AppsAPI), (Sample.app, Sample())]


def template_of(rule: str) -> str:
    return re.sub(r"<(?:[^>:]+:)?_*([^>]+?)_*>", r"{\1}", rule)


@pytest.fixture
def document() -> dict[str, Any]:
    return openapi_document(klein_apps(), "/api", "1.2.3")


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_route_appears(document: dict[str, Any]) -> None:
    expected = set()
    for klein_app, _ in klein_apps():
        for rule in klein_app.url_map.iter_rules():
            methods = set(rule.methods or {"GET", "POST", "PUT", "PATCH", "DELETE"})
            if "GET" in methods:
                methods.discard("HEAD")
            for method in methods:
                expected.add((template_of(rule.rule), method.lower()))
    found = {(path, method) for path, method, _ in operations(document)}
    assert found == expected
    for route in [
        ("/api/health", "get"),
        ("/api/health/ready", "get"),
        ("/api/health/live", "get"),
        ("/api/apps", "get"),
        ("/api/apps/upload", "post"),
        ("/api/apps/{scope}/{name}", "delete"),
        ("/api/apps/{scope}/{name}/{version}", "delete"),
    ]:
        assert route in found


def test_document_structure(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"]
    assert document["info"]["version"] == "1.2.3"
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations(document):
        assert method in HTTP_METHODS
        assert path.startswith("/api/")
        assert operation["summary"]
        assert operation["responses"]
        for status, response in operation["responses"].items():
            assert status == "default" or re.fullmatch(r"[1-5]\d\d", status)
            assert "description" in response or "$ref" in response
        placeholders = set(re.findall(r"\{([^}]+)\}", path))
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert placeholders == declared
        assert all(p["required"] is True for p in operation.get("parameters", []))


def test_references_resolve(document: dict[str, Any]) -> None:
    def refs(node: Any):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(document))
    assert found
    for ref in found:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict)


def test_valid_by_the_openapi_schema(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_docstrings_become_summary_and_description(document: dict[str, Any]) -> None:
    thing = document["paths"]["/api/things/{thing_id}"]
    assert set(thing) == {"get", "put"}
    get = thing["get"]
    assert get["summary"] == "Get or replace a thing"
    assert get["description"] == (
        "The thing is found by `thing_id`; see Sample and *never* **ever** guess."
    )
    assert get["parameters"] == [
        {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    ]
    assert get["operationId"] != thing["put"]["operationId"]
    health = document["paths"]["/api/health"]["get"]
    assert health["summary"] == "Health check"
    assert "healthy" in health["description"]
    upload = document["paths"]["/api/apps/upload"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"200", "400", "413", "default"} <= set(upload["responses"])


def test_routes_without_docstrings_and_hints(document: dict[str, Any]) -> None:
    files = document["paths"]["/api/files/{rest}"]["get"]
    assert files["summary"] == "files"
    assert files["parameters"][0]["name"] == "rest"
    posted = document["paths"]["/api/health"]["post"]
    assert posted["operationId"] == "Sample.health"
    assert posted["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    assert posted["responses"]["201"] == {"description": "Created"}
    assert posted["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert posted["responses"]["204"] == {"description": "Nothing"}
    assert set(document["paths"]["/api/anything"]) == {"get", "post", "put", "patch", "delete"}
    assert "/api/branch/{rest}" in document["paths"]


def test_api_prefix() -> None:
    document = openapi_document(klein_apps(), "/v1/api", "1.0.0")
    assert all(path.startswith("/v1/api/") for path in document["paths"])
    assert "/v1/api/apps/{scope}/{name}" in document["paths"]


def test_changes_declare_the_bearer_token_and_their_refusals(document: dict[str, Any]) -> None:
    """A client generated from the document sends the token, and knows 401 and 403."""
    scheme = document["components"]["securitySchemes"]["bearerToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, operation in operations(document):
        if method in {"post", "put", "patch", "delete"}:
            assert operation["security"] == [{"bearerToken": []}, {}], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            assert "`UNAUTHORIZED`" in operation["responses"]["401"]["description"]
        else:
            assert "security" not in operation, (method, path)
            assert "401" not in operation["responses"], (method, path)


# -- the docs page ----------------------------------------------------------------


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_docs_page_lists_every_operation_offline(document: dict[str, Any]) -> None:
    page = docs_page(document)
    assert page.startswith(b"<!DOCTYPE html>")
    collector = _Collector()
    collector.feed(page.decode("utf-8"))
    text = " ".join(collector.text)
    ids = {attrs.get("id") for tag, attrs in collector.tags if tag == "section"}
    for path, method, operation in operations(document):
        assert path in text
        assert operation["summary"] in text
        assert any(i and i.startswith(method + "-") for i in ids)
    assert len(ids) == sum(1 for _ in operations(document))
    # Self-contained: no script, no external stylesheet, image or font.
    assert all(tag not in ("script", "link", "img", "iframe") for tag, _ in collector.tags)
    for _, attrs in collector.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), value
    assert b"@import" not in page and b"url(" not in page


def test_docs_page_escapes_text() -> None:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "<script>alert(1)</script>", "version": "1"},
        "paths": {
            "/api/x": {
                "get": {
                    "summary": "<b>bold</b>",
                    "description": "uses `<tag>` & more",
                    "responses": {"200": {"description": "<i>ok</i>"}},
                }
            }
        },
    }
    page = docs_page(document).decode("utf-8")
    assert "<script>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<code>&lt;tag&gt;</code> &amp; more" in page
