"""
The core API's OpenAPI 3.1 document, generated from the Klein route
definitions themselves (paths, methods, path converters, endpoint
docstrings) so it cannot drift from the code, and a self-contained HTML page
that renders it offline.

A docstring's first paragraph is an operation's summary and the rest its
description (epytext markup becomes Markdown).  What a docstring cannot say
(request body, response shapes) is attached with L{describe}.
"""

from __future__ import annotations

import html
import inspect
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from klein import Klein

OPENAPI_VERSION = "3.1.0"
_HINTS = "__openapi__"
_ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
_PARAMETER = re.compile(
    r"<(?:(?P<converter>[A-Za-z_]\w*)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[A-Za-z_]\w*)>"
)
_CONVERTER_SCHEMAS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "uuid": {"type": "string", "format": "uuid"},
}
_EPYTEXT = re.compile(r"([CLIBU])\{([^{}]*)\}")
_EPYTEXT_MARKS = {"C": "`{}`", "I": "*{}*", "B": "**{}**", "L": "{}", "U": "{}"}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BEARER = "bearerToken"
_REFUSALS = {
    "401": {
        "description": "`UNAUTHORIZED`: `RUNTIME_API_TOKEN` is set and the request does not "
        "bear it (`WWW-Authenticate: Bearer`)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "403": {
        "description": "`FORBIDDEN`: the CSRF rule (no `Origin` matching `Host`), or, "
        "without a token, a client on another machine or a `Host` not naming this one",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}

F = TypeVar("F", bound=Callable[..., Any])


def describe(
    *,
    request_body: dict[str, Any] | None = None,
    responses: dict[int | str, str | dict[str, Any]] | None = None,
) -> Callable[[F], F]:
    """
    Attach to a route function what its docstring cannot say: an OpenAPI
    C{requestBody} object, and responses by status (a description string, or
    a full response object).  Use it next to C{@app.route}.
    """

    def attach(function: F) -> F:
        setattr(function, _HINTS, {"request_body": request_body, "responses": responses or {}})
        return function

    return attach


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI response object: C{description} and a JSON body of C{schema}."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_object(**properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema object with C{properties}, all of them required."""
    return {"type": "object", "properties": properties, "required": list(properties)}


STRING: dict[str, Any] = {"type": "string"}
STRINGS: dict[str, Any] = {"type": "array", "items": STRING}


def success(**data: dict[str, Any]) -> dict[str, Any]:
    """The schema of C{{"success": true, "data": {...}}} with C{data}'s properties."""
    return json_object(success={"const": True}, data=json_object(**data))


def _markdown(text: str) -> str:
    return _EPYTEXT.sub(lambda m: _EPYTEXT_MARKS[m.group(1)].format(m.group(2)), text)


def _summary_and_description(function: Callable[..., Any]) -> tuple[str, str]:
    """First docstring paragraph, and the others (epytext C{@fields} dropped)."""
    text = inspect.getdoc(function) or ""
    kept = []
    for line in text.splitlines():
        if line.lstrip().startswith("@"):
            break
        kept.append(line)
    paragraphs = [
        " ".join(line.strip() for line in block.splitlines()).strip()
        for block in re.split(r"\n\s*\n", "\n".join(kept))
    ]
    paragraphs = [_markdown(p) for p in paragraphs if p]
    if not paragraphs:
        return "", ""
    return paragraphs[0].rstrip("."), "\n\n".join(paragraphs[1:])


def _methods(rule: Any) -> list[str]:
    methods = set(rule.methods or _ALL_METHODS)
    if "GET" in methods:
        methods.discard("HEAD")
    if len(methods) > 1:
        methods.discard("OPTIONS")
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return sorted(methods, key=lambda m: (rank.get(m, len(rank)), m))


def _path_and_parameters(rule_path: str) -> tuple[str, list[dict[str, Any]]]:
    """C{/api/x/<int:id>} -> C{/api/x/{id}} and its path parameter objects."""
    parameters = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name").strip("_") or match.group("name")
        converter = match.group("converter") or "default"
        schema = dict(_CONVERTER_SCHEMAS.get(converter, {"type": "string"}))
        parameter: dict[str, Any] = {"name": name, "in": "path", "required": True}
        parameter["schema"] = schema
        if converter == "path":
            parameter["description"] = "The rest of the path (may contain `/`)"
        parameters.append(parameter)
        return "{" + name + "}"

    return _PARAMETER.sub(replace, rule_path), parameters


def _tag(rule_path: str) -> str:
    segments = [s for s in rule_path.split("/") if s]
    if segments and segments[0] == "api":
        segments = segments[1:]
    if not segments or segments[0].startswith("<"):
        return "api"
    return segments[0].split(".")[0]


def _response(status: str, value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if status.startswith(("4", "5")):
        return {
            "description": value,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return {"description": value}


def _responses(hints: dict[str, Any], change: bool = False) -> dict[str, Any]:
    """The responses of an operation; a C{change} may be refused (401, 403) too."""
    responses: dict[str, Any] = {
        "200": {"description": "Success", "content": {"application/json": {"schema": {}}}},
    }
    for status, value in hints.get("responses", {}).items():
        responses[str(status)] = _response(str(status), value)
    if change:
        for status, refusal in _REFUSALS.items():
            responses.setdefault(status, refusal)
    responses["default"] = {"$ref": "#/components/responses/Error"}
    return responses


def _routes(klein_app: Klein) -> Iterable[tuple[Any, Callable[..., Any]]]:
    for rule in klein_app.url_map.iter_rules():
        handler = klein_app.endpoints.get(rule.endpoint)
        if handler is not None:
            yield rule, getattr(handler, "__wrapped__", handler)  # klein wraps it (functools.wraps)


def openapi_document(
    klein_apps: list[tuple[Klein, object]], api_base: str, version: str
) -> dict[str, Any]:
    """
    The OpenAPI 3.1 document for the routes of C{klein_apps} (each with the
    object that owns it), whose C{/api/...} routes are served at
    C{api_base} (C{{prefix}/api}).
    """
    base = api_base.rstrip("/")
    prefix = base[: -len("/api")] if base.endswith("/api") else base
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    operation_ids: set[str] = set()
    for klein_app, owner in klein_apps:
        for rule, function in _routes(klein_app):
            path, parameters = _path_and_parameters(rule.rule)
            path = (prefix if rule.rule.startswith("/api") else base) + path
            summary, description = _summary_and_description(function)
            hints = getattr(function, _HINTS, {})
            tag = _tag(rule.rule)
            if tag not in tags:
                tags.append(tag)
            methods = _methods(rule)
            for method in methods:
                operation_id = str(rule.endpoint)
                if len(methods) > 1:
                    operation_id += "_" + method.lower()
                if operation_id in operation_ids:
                    operation_id = f"{type(owner).__name__}.{operation_id}"
                operation_ids.add(operation_id)
                operation: dict[str, Any] = {
                    "operationId": operation_id,
                    "summary": summary or str(rule.endpoint).replace("_", " "),
                    "tags": [tag],
                }
                if description:
                    operation["description"] = description
                if parameters:
                    operation["parameters"] = parameters
                if hints.get("request_body"):
                    operation["requestBody"] = hints["request_body"]
                operation["responses"] = _responses(hints, method in _CHANGES)
                if method in _CHANGES:
                    operation["security"] = [{_BEARER: []}, {}]
                paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "buntime core API",
            "version": version,
            "description": (
                f"The JSON API of the buntime runtime, served under `{base}`. "
                'Errors answer `{"error": {"code": "...", "message": "..."}}`. '
                "POST, PUT, PATCH and DELETE need `Authorization: Bearer <token>` when "
                "`RUNTIME_API_TOKEN` is set; without a token they are taken from this "
                "machine only, with an `Origin` header matching `Host` (or "
                "`x-buntime-internal: true` and no `Origin`)."
            ),
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {
                _BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`RUNTIME_API_TOKEN`: needed by every change when it is set; "
                    "without it changes are taken from this machine only",
                }
            },
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        },
    }


# -- the docs page --------------------------------------------------------------

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232b;
background:#f6f7f9}
header{background:#1d232b;color:#fff;padding:20px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c4cad3}main{display:flex;gap:24px;padding:24px 32px}
nav{flex:0 0 260px;position:sticky;top:16px;align-self:flex-start;font-size:14px}
nav h2{font-size:12px;text-transform:uppercase;color:#6b7480;margin:16px 0 4px}
nav a{display:block;color:#1d232b;text-decoration:none;padding:2px 0;overflow-wrap:anywhere}
nav a:hover{text-decoration:underline}.ops{flex:1;min-width:0}
section.op{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:0 0 16px;
padding:14px 18px}
.op h3{margin:0 0 6px;font-size:16px;display:flex;gap:10px;align-items:center;
flex-wrap:wrap}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px}
.m{font:bold 12px ui-monospace,monospace;color:#fff;border-radius:4px;padding:2px 8px;
text-transform:uppercase}
.get,.head{background:#2f7dd1}.post{background:#2e9d5b}.put,.patch{background:#c98a12}
.delete{background:#c8453b}.options,.trace{background:#6b7480}
h4{margin:12px 0 4px;font-size:13px;text-transform:uppercase;color:#6b7480}
table{border-collapse:collapse;width:100%;font-size:14px}
td,th{border-top:1px solid #eceff2;padding:4px 8px;text-align:left;vertical-align:top}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
code{background:#eef1f4;padding:0 3px;border-radius:3px}
pre{background:#f3f5f7;padding:8px;overflow:auto;border-radius:4px;margin:4px 0}
.summary{font-weight:600}footer{padding:0 32px 32px;color:#6b7480;font-size:13px}
@media (max-width:800px){main{flex-direction:column}nav{position:static}}
"""

_CODE = re.compile(r"`([^`]+)`")


def _text(markdown: str) -> str:
    """Escaped text with C{`code`} spans and paragraphs."""
    paragraphs = [p for p in re.split(r"\n\s*\n", markdown) if p.strip()]
    return "".join(
        "<p>" + _CODE.sub(r"<code>\1</code>", html.escape(p)) + "</p>" for p in paragraphs
    )


def _anchor(method: str, path: str) -> str:
    return method + "-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")


def _schema_text(schema: Any) -> str:
    if not schema:
        return ""
    return "<pre>" + html.escape(json.dumps(schema, indent=2)) + "</pre>"


def _content(content: dict[str, Any]) -> str:
    parts = []
    for media_type, media in content.items():
        parts.append(f"<div><code>{html.escape(media_type)}</code></div>")
        parts.append(_schema_text((media or {}).get("schema")))
    return "".join(parts)


def _operation_html(anchor: str, method: str, path: str, operation: dict[str, Any]) -> str:
    out = [
        f'<section class="op" id="{html.escape(anchor)}">',
        f'<h3><span class="m {html.escape(method)}">{html.escape(method)}</span>',
        f'<span class="path">{html.escape(path)}</span></h3>',
        f'<div class="summary">{html.escape(operation.get("summary", ""))}</div>',
        _text(operation.get("description", "")),
    ]
    parameters = operation.get("parameters") or []
    if parameters:
        out.append("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th>")
        out.append("<th>description</th></tr>")
        for p in parameters:
            kind = (p.get("schema") or {}).get("type", "")
            out.append(
                f"<tr><td><code>{html.escape(p['name'])}</code></td>"
                f"<td>{html.escape(p.get('in', ''))}</td><td>{html.escape(str(kind))}</td>"
                f"<td>{_text(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = operation.get("requestBody")
    if body:
        out.append("<h4>Request body</h4>")
        out.append(_text(body.get("description", "")))
        out.append(_content(body.get("content", {})))
    out.append("<h4>Responses</h4><table>")
    for status, response in operation.get("responses", {}).items():
        if "$ref" in response:
            text = (
                "Error: <code>{&quot;error&quot;: {&quot;code&quot;, &quot;message&quot;}}</code>"
            )
            content = ""
        else:
            text = _text(response.get("description", ""))
            content = _content(response.get("content") or {})
        out.append(f"<tr><td><code>{html.escape(str(status))}</code></td>")
        out.append(f"<td>{text}{content}</td></tr>")
    out.append("</table></section>")
    return "".join(out)


def docs_page(document: dict[str, Any]) -> bytes:
    """
    A self-contained HTML page (inline CSS, no script, nothing fetched)
    listing every operation of an OpenAPI C{document}, grouped by tag.
    """
    info = document.get("info", {})
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
        tag["name"]: [] for tag in document.get("tags", [])
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method.upper() not in _METHOD_ORDER:
                continue
            tag = (operation.get("tags") or ["api"])[0]
            groups.setdefault(tag, []).append((method, path, operation))
    nav, sections = [], []
    anchors: set[str] = set()
    for tag, operations in groups.items():
        if not operations:
            continue
        nav.append(f"<h2>{html.escape(tag)}</h2>")
        sections.append(f"<h2>{html.escape(tag)}</h2>")
        for method, path, operation in operations:
            anchor = _anchor(method, path)
            while anchor in anchors:
                anchor += "-"
            anchors.add(anchor)
            nav.append(
                f'<a href="#{html.escape(anchor)}">'
                f"<b>{html.escape(method.upper())}</b> {html.escape(path)}</a>"
            )
            sections.append(_operation_html(anchor, method, path, operation))
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{title}</h1>{_text(info.get('description', ''))}</header>"
        f'<main><nav>{"".join(nav)}</nav><div class="ops">{"".join(sections)}</div></main>'
        f"<footer>OpenAPI {html.escape(str(document.get('openapi', '')))} document: "
        '<a href="openapi.json">openapi.json</a></footer></body></html>'
    )
    return page.encode("utf-8")
