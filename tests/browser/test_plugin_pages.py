"""
The metrics dashboard and the log viewer (the built-ins' pages) in headless
Chromium against a real runtime: in the shell's frame (INIT, live numbers
and charts after real requests, functions the shell calls, events it hears,
a prop it changes) and opened alone; the log viewer's filters, pause and
following one request's task across runtime and worker; their screenshots
in C{docs/images/}; the gateway's page connecting in the shell.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from harness import PHONE, REPO, BrowserRuntime, shell_runtime

IMAGES = REPO / "docs" / "images"
FRAME = "document.querySelector('z-frame')"
FROM_WORKER = (
    "[...document.querySelectorAll('#entries tr')]"
    ".some((tr) => tr.dataset.context.startsWith('worker:'))"
)


@pytest.fixture(scope="module")
def runtime(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserRuntime]:
    """The shell's runtime, the gateway on, metrics every 250 ms (charts fill in seconds)."""
    env = {"METRICS_SSE_INTERVAL": "250", "GATEWAY_ENABLED": "true"}
    started = shell_runtime(tmp_path_factory.mktemp("pages"), env)
    try:
        yield started
    finally:
        started.stop()


def get(runtime: BrowserRuntime, path: str, **headers: str) -> int:
    """A GET from outside the browser; its status."""
    request = urllib.request.Request(runtime.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class Traffic:
    """Requests to the bundled apps from a thread, until stopped."""

    PATHS = ("/routes-demo/", "/routes-demo/slow?s=0.03", "/routes-demo/items/7", "/routes-demo/no")

    def __init__(self, runtime: BrowserRuntime) -> None:
        self.runtime = runtime
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            get(self.runtime, self.PATHS[self.sent % len(self.PATHS)])
            self.sent += 1
            self._stop.wait(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def frame_ready(page: Any) -> None:
    page.wait_for_function(f"{FRAME}?.getAttribute('state') === 'ready'", timeout=20_000)


def inner(page: Any, path: str) -> Any:
    """The Playwright frame of the plugin page at C{path}."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame.url.split("?")[0].endswith(path):
                return frame
        page.wait_for_timeout(100)
    raise AssertionError(f"no frame at {path}: {[f.url for f in page.frames]}")


def nav(page: Any, title: str) -> Any:
    text = page.locator(".nav-text", has_text=re.compile(f"^{title}$"))
    return page.locator("#sidebar .nav-link").filter(has=text)


def call(page: Any, name: str, *args: Any) -> Any:
    """Call a function the frame registered, from the shell."""
    return page.evaluate(f"([name, args]) => {FRAME}.call(name, ...args)", [name, list(args)])


def until(check: Any, what: str, timeout: float = 20.0) -> Any:
    """C{check()} again until it answers something true (the numbers come every 250 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def sdk_state(frame: Any) -> dict:
    return frame.evaluate(
        """async () => {
            const { frameSDK } = await import('/.well-known/buntime/ui/frame-sdk.js');
            return { inFrame: frameSDK.inFrame, connected: frameSDK.connected,
                     plugin: frameSDK.props.plugin || null };
        }"""
    )


def alone(page: Any, path: str) -> None:
    """
    Open C{path} in the tab itself, not in the shell: the runtime gives a
    browser's navigation to a plugin's page the shell, so the page is fetched
    as a script would (no Sec-Fetch-Mode: navigate) and handed to the tab.
    """
    page.route(
        re.compile(re.escape(path) + r"(\?.*)?$"),
        lambda route: route.fulfill(response=route.fetch(headers={"accept": "text/html"})),
    )
    page.goto(path)


# -- the metrics dashboard ------------------------------------------------------------------

CHART = "#chart-rps path.line[data-series='requests/s']"


def test_metrics_dashboard_in_the_shell_is_live(page: Any, runtime: BrowserRuntime) -> None:
    page.goto("/cpanel/")
    page.wait_for_function("document.documentElement.dataset.shell === 'ready'")
    nav(page, "Metrics").click()
    page.wait_for_url("**/cpanel/metrics")
    frame_ready(page)
    dashboard = inner(page, "/metrics/")
    # the frame accepted the shell's INIT: connected, with the shell's props
    assert sdk_state(dashboard) == {
        "inFrame": True,
        "connected": True,
        "plugin": {"name": "@buntime/plugin-metrics", "base": "/metrics"},
    }
    dashboard.wait_for_function("document.querySelector('#live').classList.contains('live')")
    until(lambda: (call(page, "snapshot") or {}).get("samples", 0) >= 2, "two samples")
    before = call(page, "snapshot")
    drawn = dashboard.evaluate(f"document.querySelector(\"{CHART}\")?.getAttribute('d') || ''")

    for index in range(30):  # real requests to an app
        assert get(runtime, "/routes-demo/" if index % 3 else "/routes-demo/slow?s=0.02") == 200

    # the numbers and the chart move
    until(lambda: call(page, "snapshot")["requests"] >= before["requests"] + 30, "the requests")
    dashboard.wait_for_function(
        f"""d => {{
            const path = document.querySelector("{CHART}");
            return path && path.getAttribute('d') !== d;
        }}""",
        arg=drawn,
    )
    dashboard.wait_for_function(
        "Number(document.querySelector('#stat-workers .stat-value').textContent) >= 1"
    )
    latest = call(page, "snapshot")  # the shell calls the frame and gets its answer
    assert latest["requests"] >= before["requests"] + 30
    assert set(latest["latencyMs"]) == {"p50", "p95", "p99"}
    assert "routes-demo" in latest["workers"]["apps"]
    card = dashboard.locator(".app[data-app='routes-demo']")
    card.locator(".state").first.wait_for()
    assert re.search(r"\d+ (ready|busy|idle)", card.locator(".states").inner_text(), re.I)

    # the frame emits "selected" when a person picks an app, and the shell hears it
    # (an arrow: an expression that gives a function, the unsubscribe, would be called)
    page.evaluate(f"() => {{ {FRAME}.on('selected', (detail) => {{ window.picked = detail; }}); }}")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # A sample can re-lay the page out between Playwright's checks and its
    # click, which then lands beside the head: click again while the card is
    # not picked (a second click on a picked card would unpick it).
    for attempt in range(3):
        if "selected" not in (card.get_attribute("class") or "").split():
            card.locator(".app-head").click()
        try:
            picked = "window.picked && window.picked.app === 'routes-demo'"
            page.wait_for_function(picked, timeout=10_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    assert call(page, "select", None) is None
    page.wait_for_function("window.picked && window.picked.app === null")

    # the frame watches the theme prop
    page.evaluate(f"{FRAME}.props = {{ ...{FRAME}.props, theme: 'dark' }}")
    dashboard.wait_for_function("document.documentElement.dataset.theme === 'dark'")


def test_metrics_raw_data_links_open_a_tab_of_their_own(page: Any, runtime: BrowserRuntime) -> None:
    """
    JSON and Prometheus open in a new tab: in the shell's frame they would
    replace the dashboard with text that never connects.
    """
    page.goto("/cpanel/metrics")
    frame_ready(page)
    dashboard = inner(page, "/metrics/")
    for link, path in (
        ("#json-link", "/metrics/api/stats"),
        ("#prometheus-link", "/metrics/api/prometheus"),
    ):
        with page.context.expect_page() as opened:
            dashboard.click(link)
        tab = opened.value
        tab.wait_for_load_state()
        assert tab.url == runtime.url + path
        tab.close()
    assert dashboard.url == runtime.url + "/metrics/"
    assert page.evaluate(f"{FRAME}.state") == "ready"


def test_metrics_dashboard_opened_alone(page: Any, runtime: BrowserRuntime) -> None:
    alone(page, "/metrics/")
    assert page.url.endswith("/metrics/")  # not the shell
    page.wait_for_function("document.querySelector('#live').classList.contains('live')")
    state = sdk_state(page)
    assert (state["inFrame"], state["connected"]) == (False, False)
    get(runtime, "/routes-demo/")
    page.wait_for_function(f'document.querySelector("{CHART}") !== null', timeout=15_000)
    assert page.locator("#stat-rps .stat-value").inner_text() != "\N{EN DASH}"  # a number


def test_the_chart_module(page: Any, runtime: BrowserRuntime) -> None:
    """The dashboard's own SVG chart code: the y axis, the points and the path with gaps."""
    alone(page, "/metrics/")
    found = page.evaluate(
        """async () => {
            const chart = await import('/metrics/ui/chart.js');
            const found = chart.points([null, 10, 5, null, 0], 100, 10, 10, 5);
            return {
                axes: [0, 1, 33, 250, 0.3].map((value) => chart.axis(value)),
                path: chart.linePath(found),
                labels: [0, 2.5, 12.4, 1234, 2500000, null].map(chart.shortNumber),
            };
        }"""
    )
    assert found["axes"] == [
        {"step": 0.25, "max": 1},
        {"step": 0.25, "max": 1},
        {"step": 10, "max": 40},
        {"step": 100, "max": 300},
        {"step": 0.1, "max": 0.3},
    ]
    # the newest value at the right edge; a gap starts a new line
    assert found["path"] == "M25.0,0.0L50.0,5.0M100.0,10.0"
    assert found["labels"] == ["0", "2.5", "12", "1.2k", "2.5M", "\N{EN DASH}"]


# -- the log viewer -------------------------------------------------------------------------


def rows(frame: Any) -> list[dict]:
    return frame.evaluate(
        """() => [...document.querySelectorAll('#entries tr')].map((tr) => ({
            level: tr.dataset.level, context: tr.dataset.context,
            message: tr.querySelector('.message').textContent,
            task: tr.entry.task_uuid || null, request: tr.entry.request_id || null }))"""
    )


def test_log_viewer_filters_and_follows_a_task(page: Any, runtime: BrowserRuntime) -> None:
    page.goto("/cpanel/")
    page.wait_for_function("document.documentElement.dataset.shell === 'ready'")
    nav(page, "Logs").click()
    page.wait_for_url("**/cpanel/logs")
    frame_ready(page)
    viewer = inner(page, "/logs/")
    assert sdk_state(viewer)["connected"] is True
    viewer.wait_for_function("document.querySelector('#live').classList.contains('live')")

    # a request with a known id to a bundled app arrives live
    assert get(runtime, "/routes-demo/", **{"x-request-id": "ui-follow-1"}) == 200
    link = viewer.locator("button.link[data-request='ui-follow-1']")
    link.first.wait_for(timeout=15_000)

    # level filter: only errors (none were logged by these requests)
    viewer.locator(".levels label", has_text="Error").click()
    viewer.wait_for_function("!document.querySelector(\"#entries tr[data-level='info']\")")
    assert all(row["level"] == "error" for row in rows(viewer))
    viewer.locator(".levels label", has_text="Info").click()
    link.first.wait_for()
    # text filter
    viewer.locator("#search").fill("hello from routes-demo")
    viewer.wait_for_function(
        """() => {
            const shown = [...document.querySelectorAll('#entries .message')];
            const hello = (m) => m.textContent.includes('hello from routes-demo');
            return shown.length > 0 && shown.every(hello);
        }"""
    )
    assert page.url.endswith("/cpanel/logs?search=hello+from+routes-demo")  # the address follows
    viewer.locator("#search").fill("")
    viewer.wait_for_function(
        "[...document.querySelectorAll('#entries .message')]"
        ".some((m) => m.textContent.startsWith('GET /routes-demo/ 200'))"
    )

    # follow the request's task: the runtime's and the worker's messages of that request
    page.evaluate(
        f"() => {{ {FRAME}.on('selected', (detail) => {{ window.followed = detail; }}); }}"
    )
    viewer.locator("tr", has_text="GET /routes-demo/ 200").locator(
        "button.link[data-request='ui-follow-1']"
    ).first.click()
    viewer.locator("#task-bar:not([hidden])").wait_for()
    viewer.wait_for_function(
        "document.querySelectorAll('#entries tr').length >= 2 && " + FROM_WORKER
    )
    followed = rows(viewer)
    [task] = {row["task"] for row in followed}
    assert task is not None
    contexts = {row["context"] for row in followed}
    assert "runtime" in contexts and "worker:routes-demo@latest" in contexts
    assert any(row["message"].startswith("GET /routes-demo/ 200") for row in followed)
    assert any(row["message"].startswith("hello from routes-demo") for row in followed)
    page.wait_for_function("window.followed && window.followed.requestId === 'ui-follow-1'")
    assert page.evaluate("window.followed.task") == task
    page.wait_for_url(re.compile(r".*/cpanel/logs\?.*task=" + task))

    # the shell follows another request by calling the frame
    assert get(runtime, "/routes-demo/", **{"x-request-id": "ui-follow-2"}) == 200
    answer = call(page, "follow", "ui-follow-2")
    assert answer["requestId"] == "ui-follow-2" and answer["task"] != task
    assert {"runtime", "worker:routes-demo@latest"} <= set(answer["sources"])
    assert {row["request"] for row in rows(viewer)} <= {"ui-follow-2", None}
    error = page.evaluate(f"{FRAME}.call('follow', 'nobody').catch((e) => e.message)")
    assert error == "No message of the request nobody is kept"

    # back to everything; pause holds the view, follow catches up
    viewer.get_by_role("button", name="Show all", exact=True).click()
    viewer.locator("#task-bar").wait_for(state="hidden")
    viewer.get_by_role("button", name="Pause", exact=True).click()
    viewer.locator("#live.paused").wait_for()
    assert get(runtime, "/routes-demo/", **{"x-request-id": "ui-paused-1"}) == 200
    page.wait_for_timeout(1500)  # three looks of the stream: nothing may arrive
    assert viewer.locator("button.link[data-request='ui-paused-1']").count() == 0
    viewer.get_by_role("button", name="Follow", exact=True).click()
    viewer.locator("button.link[data-request='ui-paused-1']").first.wait_for()
    # clear the view: the rows go, live ones still come
    viewer.get_by_role("button", name="Clear view", exact=True).click()
    assert viewer.locator("#entries tr").count() == 0
    assert get(runtime, "/routes-demo/", **{"x-request-id": "ui-after-clear"}) == 200
    viewer.locator("button.link[data-request='ui-after-clear']").first.wait_for()
    result = call(page, "filter", {"level": "warn"})
    assert result["task"] is None
    assert all(row["level"] in ("warn", "error") for row in rows(viewer))


def test_log_viewer_opened_alone_with_a_deep_link(page: Any, runtime: BrowserRuntime) -> None:
    assert get(runtime, "/routes-demo/", **{"x-request-id": "ui-alone-1"}) == 200
    found = runtime.request("GET", "/logs/api/?request_id=ui-alone-1")["entries"]
    task = found[0]["task_uuid"]
    alone(page, f"/logs/?task={task}")
    page.locator("#task-bar:not([hidden])").wait_for()
    page.wait_for_function(FROM_WORKER)
    assert {row["task"] for row in rows(page)} == {task}
    assert sdk_state(page)["inFrame"] is False


# -- screenshots for docs/ ------------------------------------------------------------------


# -- the gateway's page ---------------------------------------------------------------------


def test_gateway_page_connects_in_the_shell(page: Any, runtime: BrowserRuntime) -> None:
    """
    The gateway's page speaks the frame protocol: the shell shows its stats,
    not "This page is not responding" ten seconds later.
    """
    page.goto("/cpanel/gateway")
    frame = inner(page, "/gateway/")
    frame.wait_for_selector("#parts section", timeout=20_000)
    page.wait_for_function(f"{FRAME}?.state !== 'loading'", timeout=20_000)
    assert page.evaluate(f"{FRAME}.state") == "ready"
    assert sdk_state(frame)["plugin"] == {"name": "@buntime/plugin-gateway", "base": "/gateway"}
    call(page, "refresh")


def test_screenshots_of_the_dashboard_and_the_log_viewer(browser: Any, runtime: Any) -> None:
    """docs/shell.md shows these; the suite retakes them so they stay current."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, viewport, mobile in (
        ("", {"width": 1280, "height": 800}, False),
        ("-phone", PHONE, True),
    ):
        context = browser.new_context(viewport=viewport, base_url=runtime.url, is_mobile=mobile)
        try:
            page = context.new_page()
            page.goto("/cpanel/metrics")
            frame_ready(page)
            dashboard = inner(page, "/metrics/")
            with Traffic(runtime):
                # a dozen samples with requests in them
                dashboard.wait_for_function(
                    "document.querySelector(\"#chart-rps path.line[data-series='requests/s']\")"
                    "?.getAttribute('d').split('L').length >= 12",
                    timeout=30_000,
                )
            dashboard.locator(".app[data-app='routes-demo']").wait_for()
            page.screenshot(path=str(IMAGES / f"metrics-dashboard{name}.png"))

            get(runtime, "/routes-demo/", **{"x-request-id": "docs-example"})
            page.goto("/cpanel/logs")
            frame_ready(page)
            viewer = inner(page, "/logs/")
            viewer.locator("button.link[data-request='docs-example']").first.wait_for()
            page.screenshot(path=str(IMAGES / f"logs-viewer{name}.png"))
            if not mobile:
                call(page, "follow", "docs-example")
                viewer.locator("#task-bar:not([hidden])").wait_for()
                page.screenshot(path=str(IMAGES / "logs-task.png"))
        finally:
            context.close()
