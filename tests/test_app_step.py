"""L{buntime.web.apps.AppStep}: what the fast lane asks of a head serves its request."""

from __future__ import annotations

from attrs import define, field
from e2e_apps import static_app
from twisted.internet.task import Clock

from buntime.apps.discovery import AppCatalog
from buntime.http import Headers, Request
from buntime.web.apps import AppStep


@define
class CountedCatalog(AppCatalog):
    """An app catalog that remembers what it was asked to resolve."""

    asked: list[tuple[str, str | None]] = field(factory=list, init=False)

    def resolve(self, name: str, spec: str | None):
        self.asked.append((name, spec))
        return super().resolve(name, spec)


def step_over(root, clock: Clock) -> tuple[AppStep, list[tuple[str, str | None]]]:
    catalog = CountedCatalog([str(root)], clock)
    step = AppStep(
        catalog=catalog,
        pool=None,  # type: ignore[arg-type]  # static apps only
        environ={},
        runtime_env=dict,
        body_size_default=1000,
        body_size_max=10_000,
        clock=clock,
    )
    return step, catalog.asked


def get(path: str) -> Request:
    return Request("GET", path, Headers(), b"", "127.0.0.1")


def body_of(answer) -> bytes:
    return answer.result.body


def test_a_claimed_path_is_served_without_routing_again(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    step, asked = step_over(tmp_path, Clock())
    assert step.claims("/site/") == 1000
    assert asked == [("site", None)]
    assert b"one" in body_of(step.direct(get("/site/"), {}))
    assert asked == [("site", None)]  # routed once
    step.direct(get("/site/"), {})
    assert len(asked) == 2  # a claim serves one request


def test_a_claim_serves_only_its_own_path(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    static_app(tmp_path, "other", "1.0.0", "two")
    step, asked = step_over(tmp_path, Clock())
    step.claims("/site/")
    assert b"two" in body_of(step.direct(get("/other/"), {}))
    assert asked == [("site", None), ("other", None)]


def test_a_claim_made_before_the_apps_changed_is_not_used(tmp_path):
    static_app(tmp_path, "site", "1.0.0", "one")
    clock = Clock()
    step, asked = step_over(tmp_path, clock)
    step.claims("/site/")
    static_app(tmp_path, "site", "2.0.0", "two")
    clock.advance(2)  # the catalog looks again
    assert b"two" in body_of(step.direct(get("/site/"), {}))
    step.claims("/site/")
    step.catalog.invalidate()
    assert b"two" in body_of(step.direct(get("/site/"), {}))
    assert len(asked) == 4
