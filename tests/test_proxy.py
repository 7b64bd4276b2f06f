"""
The proxy plugin's parts without a network: its rules (matching, rewriting,
the SSRF guard), the rules kept on disk, the headers it sends upstream, and
its hook and API driven as the runtime drives them.
"""

from __future__ import annotations

import json
import os

import pytest
from twisted.internet.task import Clock

from buntime.builtins.proxy.forward import outgoing_headers
from buntime.builtins.proxy.plugin import ProxyPlugin
from buntime.builtins.proxy.rules import Rule, RuleError, RuleStore, parse_rule
from buntime.http import Request
from buntime.plugins.loader import verify


def rule(**fields: object) -> Rule:
    return parse_rule({"pattern": "^/api/(.*)", "target": "http://127.0.0.1:9000", **fields})


def test_a_rule_matches_and_rewrites_with_its_groups():
    assert rule().upstream_path("/api/x/y") == "/api/x/y"  # no rewrite: the path as it came
    assert rule(rewrite="/v2/$1").upstream_path("/api/x/y") == "/v2/x/y"
    assert rule(rewrite="${1}/z").upstream_path("/api/x") == "/x/z"
    named = parse_rule({"pattern": r"^/u/(?P<who>\w+)", "target": "http://h", "rewrite": "/$<who>"})
    assert named.upstream_path("/u/ada") == "/ada"
    assert rule().upstream_path("/other") is None
    based = rule(base="/edge", pattern="^/(.*)", rewrite="/$1")
    assert based.upstream_path("/edge/a") == "/a"
    assert based.upstream_path("/edges/a") is None
    assert rule(rewrite=r"/a\1").upstream_path("/api/x") == r"/a\1"  # backslashes are literal


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"pattern": "(unclosed"}, "not a valid regular expression"),
        ({"pattern": ""}, "pattern is required"),
        ({"target": "ftp://h"}, "http:// or https://"),
        ({"target": "http://user:pw@h"}, "credentials"),
        ({"target": "http://h:99999"}, "not a URL"),
        ({"rewrite": "/$2"}, "$2"),
        ({"headers": {"bad name": "x"}}, "not a token"),
        ({"headers": {"x": "a\r\nb"}}, "one line"),
        ({"ws": "yes"}, "ws must be true or false"),
        ({"base": "/a/"}, "base must be a path"),
        ({"id": "a b"}, "id must be"),
        ({"nope": 1}, "unknown field"),
    ],
)
def test_a_bad_rule_is_refused_with_what_is_wrong(fields, says):
    with pytest.raises(RuleError) as raised:
        rule(**fields)
    assert says in str(raised.value)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest",
        "http://[fe80::1]:80",
        "http://[::ffff:169.254.169.254]",
        "http://metadata.google.internal",
        "http://[fd00:ec2::254]",
    ],
)
def test_rules_from_the_api_may_not_reach_metadata_services(target):
    with pytest.raises(RuleError, match="link-local or metadata"):
        parse_rule({"pattern": "^/", "target": target}, allow_link_local=False)
    assert parse_rule({"pattern": "^/", "target": target}).target  # the manifest may


def test_stored_rules_survive_and_a_broken_file_loses_nothing(tmp_path):
    store = RuleStore(str(tmp_path / "proxy"))
    assert store.load(False) == ([], [])
    kept = rule(id="a", rewrite="/$1", headers={"x-k": "v"}, changeOrigin=True)
    store.save([kept])
    [loaded], problems = store.load(False)
    assert problems == []
    assert loaded.describe() == kept.describe()
    assert os.listdir(tmp_path / "proxy") == ["rules.json"]  # no temporary file left
    (tmp_path / "proxy" / "rules.json").write_text("{not json")
    rules, problems = store.load(False)
    assert rules == [] and "cannot be read" in problems[0]
    (tmp_path / "proxy" / "rules.json").write_text(
        json.dumps([{"pattern": "^/", "target": "http://169.254.169.254"}, kept.describe()])
    )
    rules, problems = store.load(False)
    assert len(problems) == 2 and "link-local" in problems[0] and "source" in problems[1]
    assert rules == []  # each bad one left out, with a line saying why


def test_the_upstream_gets_no_hop_by_hop_headers_and_is_told_where_the_request_came_from():
    request = Request(
        "GET",
        "/api/x",
        [
            ("host", "front.example:8000"),
            ("connection", "keep-alive, x-private-hop"),
            ("x-private-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "text/plain"),
        ],
        remote_addr="127.0.0.1",
    )
    sent = dict(outgoing_headers(request, rule(headers={"x-added": "yes"})))
    for hop in ("connection", "x-private-hop", "keep-alive", "te", "upgrade"):
        assert hop not in sent
    assert sent["accept"] == "text/plain" and sent["x-added"] == "yes"
    assert sent["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert sent["x-forwarded-host"] == "front.example:8000"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["host"] == "front.example:8000"
    assert dict(outgoing_headers(request, rule(changeOrigin=True)))["host"] == "127.0.0.1:9000"


class Context:
    def __init__(self, tmp_path, config):
        self.config = config
        self.reactor = Clock()
        self.base = "/redirects"
        self.data_dir = str(tmp_path)
        self.logger = self
        self.warned: list[str] = []

    def info(self, message, **fields):
        pass

    def warn(self, message, **fields):
        self.warned.append(message)


def test_the_hook_answers_only_matching_requests_and_never_its_own_api(tmp_path):
    proxy = ProxyPlugin({})
    verify(proxy, "@buntime/plugin-proxy")
    proxy.on_init(Context(tmp_path, {"rules": [{"pattern": ".*", "target": "http://127.0.0.1:1"}]}))
    assert [r.source for r in proxy.rules] == ["manifest"]
    assert proxy.on_request(Request("GET", "/redirects/api/rules"), None) is None
    assert proxy.on_request(Request("GET", "/redirects"), None) is None
    empty = ProxyPlugin({})
    empty.on_init(Context(tmp_path / "other", {}))
    assert empty.on_request(Request("GET", "/anything"), None) is None
