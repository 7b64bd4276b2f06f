"""buntime's HTTP value types (SPEC §5): Headers properties, Request, Response, AppInfo."""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from buntime.http import AppInfo, Headers, Request, Response, read_body

names = st.text(alphabet="abcdefgxyzABCXYZ-0123", min_size=1, max_size=8)
values = st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=12)
pairs = st.lists(st.tuples(names, values), max_size=12)


def swapped(items):
    return [(name.swapcase(), value) for name, value in items]


# -- Headers: construction ------------------------------------------------------


def test_headers_from_dict_pairs_headers_and_bytes():
    from_dict = Headers({"Content-Type": "text/plain", "X-A": "1"})
    from_pairs = Headers([("content-type", "text/plain"), ("x-a", "1")])
    from_bytes = Headers([(b"Content-Type", b"text/plain"), (b"X-A", b"1")])
    assert from_dict == from_pairs == from_bytes == Headers(from_dict)
    assert Headers() == Headers(None) == Headers([]) == Headers({})
    assert len(Headers()) == 0


def test_set_add_and_remove_read_bytes_as_headers_does():
    """Bytes are read as Headers reads them: a set replaces the value, never adds a second."""
    headers = Headers({"Content-Type": "application/json", "X-A": "1"})
    changed = headers.set(b"content-type", b"text/html")  # type: ignore[arg-type]
    assert changed.getall("content-type") == ["text/html"]
    response = Response(200, headers).with_header(b"X-A", "2")  # type: ignore[arg-type]
    assert response.headers.getall("x-a") == ["2"]
    assert list(headers.remove(b"x-a")) == ["Content-Type"]  # type: ignore[arg-type]
    assert headers.add("x-b", b"v").getall("x-b") == ["v"]  # type: ignore[arg-type]


def test_headers_keep_the_given_case_for_output():
    headers = Headers([("X-Mixed-Case", "v")])
    assert headers.items() == [("X-Mixed-Case", "v")]
    assert list(headers) == ["X-Mixed-Case"]


def test_headers_values_become_strings():
    assert Headers({"x-n": 5}).get("x-n") == "5"
    assert Headers().set("x-n", 6).get("x-n") == "6"  # type: ignore[arg-type]


# -- Headers: properties --------------------------------------------------------


@given(pairs, names)
def test_lookup_is_case_insensitive(items, name):
    headers = Headers(items)
    expected = [value for key, value in items if key.lower() == name.lower()]
    for variant in (name, name.lower(), name.upper(), name.swapcase()):
        assert headers.get_all(variant) == expected
        assert headers.get(variant) == (expected[0] if expected else None)
        assert (variant in headers) is bool(expected)


@given(pairs, names)
def test_get_default(items, name):
    headers = Headers(items).remove(name)
    assert headers.get(name) is None
    assert headers.get(name, "fallback") == "fallback"


@given(pairs, names, values)
def test_set_leaves_exactly_one_value_and_the_rest_alone(items, name, value):
    headers = Headers(items)
    changed = headers.set(name.swapcase(), value)
    assert changed.get_all(name) == [value]
    others = [(k, v) for k, v in items if k.lower() != name.lower()]
    assert [(k, v) for k, v in changed.items() if k.lower() != name.lower()] == others


@given(pairs, names, values)
def test_add_appends_a_value(items, name, value):
    headers = Headers(items)
    changed = headers.add(name.upper(), value)
    assert changed.get_all(name) == [*headers.get_all(name), value]
    assert len(changed) == len(headers) + 1


@given(pairs, names)
def test_remove_drops_every_value_of_a_name_only(items, name):
    headers = Headers(items)
    changed = headers.remove(name.swapcase())
    assert name not in changed
    assert changed.get_all(name) == []
    assert changed.items() == [(k, v) for k, v in items if k.lower() != name.lower()]


@given(pairs, names, values)
def test_changes_never_touch_the_original(items, name, value):
    headers = Headers(items)
    before = headers.items()
    headers.set(name, value)
    headers.add(name, value)
    headers.remove(name)
    headers.items().append(("x-sneaky", "1"))
    assert headers.items() == before


def test_headers_are_frozen():
    headers = Headers({"a": "1"})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        headers._items = ()  # type: ignore[misc]


@given(pairs)
def test_equality_ignores_name_case(items):
    assert Headers(items) == Headers(swapped(items))
    assert hash(Headers(items)) == hash(Headers(swapped(items)))


@given(pairs, pairs)
def test_equality_ignores_the_order_of_different_names(first, second):
    first_names = {k.lower() for k, _ in first}
    second = [(k, v) for k, v in second if k.lower() not in first_names]
    assert Headers(first + second) == Headers(second + first)
    assert hash(Headers(first + second)) == hash(Headers(second + first))


@given(pairs, names, values)
def test_equality_sees_values(items, name, value):
    headers = Headers(items)
    assert headers.add(name, value) != headers
    assert headers.set(name, value + "!") != headers.set(name, value)


def test_the_order_of_one_names_values_matters():
    assert Headers([("a", "1"), ("a", "2")]) != Headers([("a", "2"), ("a", "1")])


def test_headers_never_equal_other_types():
    assert Headers({"a": "1"}) != {"a": "1"}


@given(pairs)
def test_iteration_gives_every_name_in_order(items):
    """As C{multidict} has it: every pair counts, repeated names included."""
    headers = Headers(items)
    assert list(headers) == list(headers.keys()) == [k for k, _ in items]
    assert headers.values() == [v for _, v in items]
    assert len(headers) == len(items)


def test_headers_are_a_read_only_mapping():
    headers = Headers([("Origin", "https://a.example"), ("X-A", "1"), ("x-a", "2")])
    assert isinstance(headers, Mapping)
    assert headers["origin"] == "https://a.example"
    assert headers["X-A"] == "1" and headers.getall("x-a") == ["1", "2"]
    with pytest.raises(KeyError):
        headers["missing"]
    assert dict(headers) == {"Origin": "https://a.example", "X-A": "1", "x-a": "1"}
    assert headers.get("missing", "none") == "none"
    with pytest.raises(TypeError):
        headers["x-a"] = "3"  # type: ignore[index]


# -- Request ----------------------------------------------------------------------


def test_request_parts():
    request = Request("GET", "/api/x?q=1&r=2", {"X-Request-Id": "abc"})
    assert request.path == "/api/x"
    assert request.query == "q=1&r=2"
    assert request.request_id == "abc"
    assert isinstance(request.headers, Headers)
    assert request.body == b""
    assert Request("GET", "").path == "/"
    assert Request("GET", "http://h:1/p/q?z").path == "/p/q"
    assert Request("GET", "/p").request_id is None


def test_request_changes_return_copies():
    request = Request("POST", "/a?x=1", {"h": "1"}, b"body")
    assert request.with_header("H", "2").headers.get_all("h") == ["2"]
    moved = request.with_path("/b/c")
    assert (moved.url, moved.path, moved.query) == ("/b/c?x=1", "/b/c", "x=1")
    assert Request("GET", "/a").with_path("/b").url == "/b"
    assert request.with_body(b"other").body == b"other"
    assert (request.url, request.headers.get("h"), request.body) == ("/a?x=1", "1", b"body")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.url = "/x"  # type: ignore[misc]


# -- Response ---------------------------------------------------------------------


def test_response_defaults():
    response = Response()
    assert (response.status, response.headers, response.body) == (200, Headers(), b"")


def test_response_text():
    response = Response.text("héllo", 201, {"x-a": "1"})
    assert response.status == 201
    assert response.body == "héllo".encode()
    assert response.headers.get("content-type") == "text/plain; charset=utf-8"
    assert response.headers.get("x-a") == "1"
    kept = Response.text("<p>", headers={"Content-Type": "text/html"})
    assert kept.headers.get_all("content-type") == ["text/html"]


def test_response_json():
    response = Response.json({"a": [1, None]}, 202)
    assert response.status == 202
    assert json.loads(response.body) == {"a": [1, None]}
    assert response.headers.get("content-type") == "application/json"


def test_response_json_and_text_keep_a_content_type_they_are_given():
    problem = {"content-type": "application/problem+json"}
    assert Response.json({}, 400, problem).headers["content-type"] == "application/problem+json"
    assert Response.error(400, "BAD", "no", problem).headers["Content-Type"] == (
        "application/problem+json"
    )
    assert Response.text("<p>", headers={"Content-Type": "text/html"}).headers.getall(
        "content-type"
    ) == ["text/html"]


def test_response_error_format():
    response = Response.error(404, "APP_NOT_FOUND", "No app x", {"x-not-found": "true"})
    assert response.status == 404
    assert json.loads(response.body) == {"error": {"code": "APP_NOT_FOUND", "message": "No app x"}}
    assert response.headers.get("x-not-found") == "true"


def test_response_changes_return_copies():
    response = Response(200, {"a": "1"}, b"x")
    assert response.with_header("A", "2").headers.get_all("a") == ["2"]
    assert response.with_status(500).status == 500
    assert response.with_body(b"y").body == b"y"
    assert (response.status, response.headers.get("a"), response.body) == (200, "1", b"x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        response.status = 500  # type: ignore[misc]


@pytest_twisted.ensureDeferred
async def test_read_body_of_bytes_and_streams():
    async def stream():
        yield b"ab"
        yield b""
        yield b"cd"

    assert await read_body(b"whole") == b"whole"
    assert await read_body(bytearray(b"arr")) == b"arr"
    assert await read_body(stream()) == b"abcd"
    assert await read_body(Response(body=stream()).body) == b"abcd"


# -- AppInfo ----------------------------------------------------------------------


def test_app_info():
    app = AppInfo("todos", "1.2.0", "/srv/apps/todos/1.2.0")
    assert app.config == {}
    assert AppInfo("a", "1", "/d", {"k": 1}).config == {"k": 1}
    assert app == AppInfo("todos", "1.2.0", "/srv/apps/todos/1.2.0")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        app.name = "other"  # type: ignore[misc]


def test_header_changes_keep_text_pairs():
    headers = Headers([("A", "1")])
    assert headers.set(b"B", 2).items() == [("A", "1"), ("B", "2")]  # type: ignore[arg-type]
    assert headers.add("a", "3").get_all("A") == ["1", "3"]
    assert headers.remove("A") == Headers()
    request = Request("GET", "/x?q=1", headers)
    moved = request.with_path("/y").with_header("x-base", "/app")
    assert moved.url == "/y?q=1"
    assert (moved.headers.get("X-Base"), moved.headers.get("a")) == ("/app", "1")
    assert request.headers.get("x-base") is None


@given(st.text())
def test_a_target_s_path_and_query_are_what_a_server_reads(text):
    """
    A target's path runs to its query or fragment, a leading C{//}
    included; an absolute URL's is what urlsplit reads.
    """
    from urllib.parse import urlsplit

    for url in ("/" + text, "//" + text):
        cleaned = url.replace("\t", "").replace("\r", "").replace("\n", "")
        path, _, query = cleaned.partition("#")[0].partition("?")
        request = Request("GET", url)
        assert (request.path, request.query) == (path or "/", query)
    url = "http://example.com/" + text
    parts = urlsplit(url)
    request = Request("GET", url)
    assert (request.path, request.query) == (parts.path or "/", parts.query)


def test_a_path_that_starts_with_two_slashes_is_a_path():
    request = Request("GET", "//x//y?q=1")
    assert (request.path, request.query) == ("//x//y", "q=1")
    assert request.with_path("//a").url == "//a?q=1"


def test_for_app_is_with_path_and_x_base():
    request = Request("POST", "/app/x?q=1", [("A", "1"), ("x-base", "old")], b"body", "1.2.3.4")
    moved = request.for_app("/x", "/app")
    expected = request.with_path("/x").with_header("x-base", "/app")
    assert moved == expected
    assert (moved.path, moved.query, moved.body, moved.remote_addr) == (
        "/x",
        "q=1",
        b"body",
        "1.2.3.4",
    )
    assert moved.headers.get_all("x-base") == ["/app"]


def test_an_app_s_reason_phrase_stays_with_its_status():
    response = Response(299, {}, b"", "Custom Thing")
    assert response.with_header("x-a", "1").reason == "Custom Thing"
    assert response.with_body(b"other").reason == "Custom Thing"
    assert response.with_status(200).reason is None  # another status: its standard phrase


def test_headers_set_many_in_one_copy():
    headers = Headers([("vary", "a"), ("x", "1"), ("vary", "b")])
    changed = headers.set_many([("vary", "c"), ("y", "2"), ("y", "3")])
    assert changed.items() == [("x", "1"), ("vary", "c"), ("y", "2"), ("y", "3")]
    assert headers.set_many([]) is headers
    assert headers.set_many([(b"X", 1)]).items()[-1] == ("X", "1")  # converted as Headers does
    # names compare without case, converted names too: each set name keeps only its new values
    assert headers.set_many([(b"X", 1), ("VARY", "d")]).items() == [("X", "1"), ("VARY", "d")]
    assert headers.set_many([("Y", "2")]).items() == [*headers.items(), ("Y", "2")]
    response = Response.text("x").with_headers([("X-A", "1")])
    assert response.headers["x-a"] == "1" and response.body == b"x"


@given(st.text(), st.sampled_from(["", "q=1", "a?b", "a#b"]))
def test_a_moved_request_s_path_and_query_are_what_its_url_reads(text, query):
    """
    C{with_path} and C{for_app} work out the copy's path and query at once
    when they can: they are always what a request of the copy's URL reads.
    """
    request = Request("GET", "/orig?" + query if query else "/orig", {"a": "1"}, b"", "1.2.3.4")
    for path in ("/" + text, text, "//" + text):
        for moved in (request.with_path(path), request.for_app(path, "/base")):
            fresh = Request("GET", moved.url, moved.headers, b"", "1.2.3.4")
            assert (moved.path, moved.query) == (fresh.path, fresh.query)
            assert moved == fresh


def test_copies_are_made_as_the_constructor_makes_them():
    request = Request("POST", "/a?x=1", {"h": "1"}, b"body", "1.2.3.4", 5, ("127.0.0.1", 80))
    copies = (request.with_header("h", "2"), request.with_path("/b"), request.for_app("/b", "/a"))
    for copy in copies:
        assert type(copy) is Request
        assert copy == Request(
            copy.method,
            copy.url,
            copy.headers,
            copy.body,
            copy.remote_addr,
            copy.remote_port,
            copy.local_addr,
        )
        assert (copy.body, copy.remote_addr, copy.remote_port, copy.local_addr) == (
            b"body",
            "1.2.3.4",
            5,
            ("127.0.0.1", 80),
        )
    response = Response(299, {"a": "1"}, b"x", "Custom")
    for changed in (response.with_header("b", "2"), response.with_headers([("b", "2")])):
        assert type(changed) is Response
        assert changed == Response(299, {"a": "1", "b": "2"}, b"x", "Custom")


def test_a_subclass_s_copies_keep_its_class():
    @attrs.frozen
    class Tagged(Response):
        tag: str = "t"

    @attrs.frozen
    class Routed(Request):
        tag: str = "t"

    assert type(Tagged(200, {}, b"").with_headers([("a", "1")])) is Tagged
    assert type(Tagged(200, {}, b"").with_header("a", "1")) is Tagged
    assert type(Routed("GET", "/a").with_path("/b")) is Routed
    assert type(Routed("GET", "/a").for_app("/b", "/a")) is Routed


def test_the_fast_copies_know_every_field():
    """C{Request._of} and the response copies set each slot: a new field must be set there too."""
    request_fields = [field.name for field in attrs.fields(Request)]
    assert request_fields == [
        *("method", "url", "headers", "body", "remote_addr", "remote_port", "local_addr"),
        *("http_version", "mount", "_parts"),
    ]
    request = Request("GET", "/x", http_version="1.0", mount="/m")
    copies = [
        request.with_header("a", "b"),
        request.with_path("/y"),
        request.for_app("/y", "/b"),
        request.with_mount("/m").with_path("/z"),
    ]
    assert [copy.http_version for copy in copies] == ["1.0"] * 4
    assert [copy.mount for copy in copies] == ["/m"] * 4
    assert request.with_mount("").mount == "" and request.with_mount(None).mount is None
    for wrong in ("m", "/m/", "/"):
        with pytest.raises(ValueError):
            request.with_mount(wrong)
    response_fields = [field.name for field in attrs.fields(Response)]
    assert response_fields == ["status", "headers", "body", "reason"]


def test_names_that_grow_when_lowered_are_found():
    """U+0130 lowers to two characters: comparing lengths first must not miss it."""
    headers = Headers([("İ", "1"), ("a", "2")])
    assert headers.get("İ") == "1" and headers.getall("i̇") == ["1"]
    assert headers.set("İ", "3").items() == [("a", "2"), ("İ", "3")]
    assert headers.set("İ", "3").get("K") is None and Headers([("K", "4")]).get("k") == "4"
