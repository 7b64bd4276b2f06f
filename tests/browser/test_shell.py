"""
The shell (C{apps/cpanel}) in headless Chromium against a real runtime:
navigation from the plugins' menus, plugin UIs in frames over the frame
protocol, the apps page, browser history, the 404 page, a phone screen, and
the screenshots in C{docs/images/}.
"""

from __future__ import annotations

import re
from typing import Any

from harness import PHONE, REPO, archive

IMAGES = REPO / "docs" / "images"
FRAME = "z-frame"


def frame_ready(page: Any) -> None:
    page.wait_for_function(
        "document.querySelector('z-frame')?.getAttribute('state') === 'ready'", timeout=15_000
    )


def shell_ready(page: Any) -> None:
    page.wait_for_function("document.documentElement.dataset.shell === 'ready'")


def nav(page: Any, title: str) -> Any:
    text = page.locator(".nav-text", has_text=re.compile(f"^{title}$"))
    return page.locator("#sidebar .nav-link").filter(has=text)


# -- navigation ------------------------------------------------------------------------------


def test_navigation_is_built_from_the_loaded_plugins_menus(page: Any) -> None:
    page.goto("/cpanel/")
    shell_ready(page)
    titles = page.locator("#sidebar .nav-link .nav-text").all_inner_texts()
    assert titles[:2] == ["Overview", "Apps"]
    assert {"Metrics", "Proxy", "Demo", "Details", "Settings"} <= set(titles)
    assert nav(page, "Overview").get_attribute("aria-current") == "page"
    # nested items stay folded until asked for
    details = nav(page, "Details")
    assert not details.is_visible()
    page.get_by_role("button", name="Show Demo pages").click()
    assert details.is_visible()
    # icons: drawn when known, the title's letter otherwise (an unknown name, an image that fails)
    assert nav(page, "Proxy").locator("svg.icon").count() == 1
    assert nav(page, "Demo").locator(".icon-letter").inner_text() == "D"
    settings = "document.querySelector('[data-route=\"/demo/settings\"] .icon-letter')"
    page.wait_for_function(f"{settings}?.textContent === 'S'")


def test_menu_item_opens_the_plugin_ui_in_a_frame_that_gets_init(page: Any) -> None:
    page.goto("/cpanel/")
    shell_ready(page)
    nav(page, "Proxy").click()
    page.wait_for_url("**/cpanel/redirects")
    frame_ready(page)
    assert page.locator("#page-title").inner_text() == "Proxy"
    assert page.title() == "Proxy · buntime"
    inner = page.frame_locator(FRAME + " >> iframe")
    inner.locator("h1", has_text="Rules").wait_for()
    # the frame's SDK accepted the shell's INIT and holds its props
    sdk = next(f for f in page.frames if f.url.endswith("/redirects/"))
    props = sdk.evaluate(
        """async () => {
            const { frameSDK } = await import('/.well-known/buntime/ui/frame-sdk.js');
            const props = frameSDK.props;
            return { connected: frameSDK.connected, plugin: props.plugin,
                     navigate: typeof props.navigate, notify: typeof props.notify };
        }"""
    )
    assert props == {
        "connected": True,
        "plugin": {"name": "@buntime/plugin-proxy", "base": "/redirects"},
        "navigate": "function",
        "notify": "function",
    }


def test_live_content_in_a_frame(page: Any) -> None:
    page.goto("/cpanel/demo")
    frame_ready(page)
    inner = page.frame_locator(FRAME + " >> iframe")
    inner.locator("#plugin", has_text="@test/plugin-demo").wait_for()
    tick = inner.locator("#tick")
    first = int(tick.inner_text())
    page.wait_for_function(
        "n => Number(document.querySelector('z-frame').iframe"
        ".contentDocument.getElementById('tick').textContent) > n + 2",
        arg=first,
    )


def test_shell_calls_a_frame_function_and_the_frame_calls_the_shell(
    page: Any, runtime: Any
) -> None:
    page.goto("/cpanel/redirects")
    frame_ready(page)
    inner = page.frame_locator(FRAME + " >> iframe")
    inner.locator("#count", has_text="0").wait_for()
    rule = {"id": "legacy", "pattern": "^/legacy/(.*)", "target": "http://127.0.0.1:9"}
    runtime.request("POST", "/redirects/api/rules", rule)
    try:
        # shell -> frame: a function the proxy's page registered
        assert page.evaluate("document.querySelector('z-frame').call('refresh')") == 1
        summary = page.evaluate("document.querySelector('z-frame').call('summary')")
        assert summary == {"rules": 1, "ids": ["legacy"]}
        inner.locator("tr[data-rule=legacy]").wait_for()
        # frame -> shell: the page calls the notify function the shell passed as a prop
        inner.locator("tr[data-rule=legacy] button", has_text="Delete").click()
        page.locator(".toast", has_text="Deleted the rule legacy").wait_for()
        inner.locator("#count", has_text="0").wait_for()
        # a function the frame does not have: the shell's promise rejects
        error = page.evaluate(
            "document.querySelector('z-frame').call('nope').catch((e) => e.message)"
        )
        assert error == 'No function "nope" is registered in this frame'
    finally:
        rules = runtime.request("GET", "/redirects/api/rules")["rules"]
        if any(r["id"] == "legacy" for r in rules):
            runtime.request("DELETE", "/redirects/api/rules/legacy")


def test_deep_links_and_back_and_forward(page: Any) -> None:
    page.goto("/cpanel/demo/details")
    frame_ready(page)
    assert page.locator("#page-title").inner_text() == "Details"
    assert nav(page, "Details").get_attribute("aria-current") == "page"
    where = "document.querySelector('z-frame').call('where')"
    assert page.evaluate(where) == "/demo/details"

    nav(page, "Apps").click()
    page.wait_for_url("**/cpanel/apps")
    page.locator("#apps-rows tr[data-app=cpanel]").wait_for()
    nav(page, "Proxy").click()
    page.wait_for_url("**/cpanel/redirects")
    frame_ready(page)

    page.go_back()
    page.wait_for_url("**/cpanel/apps")
    assert page.locator("#page-title").inner_text() == "Apps"
    page.go_back()
    page.wait_for_url("**/cpanel/demo/details")
    frame_ready(page)
    assert page.evaluate(where) == "/demo/details"
    page.go_forward()
    page.wait_for_url("**/cpanel/apps")
    assert nav(page, "Apps").get_attribute("aria-current") == "page"


def test_a_link_inside_the_frame_updates_the_shell_address(page: Any) -> None:
    page.goto("/cpanel/demo")
    frame_ready(page)
    page.evaluate(
        "document.querySelector('z-frame').iframe.contentWindow"
        ".history.pushState(null, '', '/demo/settings')"
    )
    page.wait_for_url("**/cpanel/demo/settings")
    assert nav(page, "Settings").get_attribute("aria-current") == "page"
    # the frame asks the shell to show another page: with the navigate prop...
    sdk = "import('/.well-known/buntime/ui/frame-sdk.js')"
    page.evaluate(
        """async (sdk) => {
            const frame = document.querySelector('z-frame').iframe.contentWindow;
            const { frameSDK } = await frame.eval(sdk);
            frameSDK.props.navigate('/cpanel/apps');  // the frame goes away: no answer to wait for
        }""",
        sdk,
    )
    page.wait_for_url("**/cpanel/apps")
    page.go_back()
    page.wait_for_url("**/cpanel/demo/settings")
    frame_ready(page)
    # ... or with frameSDK.navigate
    page.evaluate(
        """async (sdk) => {
            const frame = document.querySelector('z-frame').iframe.contentWindow;
            const { frameSDK } = await frame.eval(sdk);
            frameSDK.navigate('/cpanel/');
        }""",
        sdk,
    )
    page.wait_for_url(re.compile(r".*/cpanel/$"))


def test_a_plugin_page_that_never_connects_shows_an_error_in_the_shell(page: Any) -> None:
    page.goto("/cpanel/demo/missing")  # the demo plugin answers 404 there
    page.wait_for_function(
        "document.querySelector('z-frame')?.getAttribute('state') === 'error'", timeout=20_000
    )
    alert = page.locator("z-frame [role=alert]")
    assert "This page is not responding" in alert.inner_text()
    assert alert.get_by_role("link", name="Open it alone").get_attribute("href") == "/demo/missing"
    # the frame holds the plugin's 404, not a second shell
    assert (
        page.evaluate(
            "document.querySelector('z-frame').iframe.contentDocument.querySelector('#sidebar')"
        )
        is None
    )


def test_unknown_paths_show_the_404_page(page: Any) -> None:
    page.goto("/cpanel/no/such/page")
    shell_ready(page)
    assert page.locator("#page-title").inner_text() == "Page not found"
    card = page.locator(".not-found")
    assert "This page does not exist" in card.inner_text()
    assert "/no/such/page" in card.inner_text()
    card.get_by_role("link", name="Go to the overview").click()
    page.wait_for_url(re.compile(r".*/cpanel/$"))
    assert page.locator("#page-title").inner_text() == "Overview"


def test_shell_routing_serves_the_shell_at_root_and_plugin_paths(page: Any, runtime: Any) -> None:
    page.goto("/")
    shell_ready(page)
    assert page.url == runtime.url + "/cpanel/"
    page.goto("/redirects/")
    frame_ready(page)
    assert page.url == runtime.url + "/cpanel/redirects"
    # the frame (and any fetch) gets the plugin itself; its API is never the shell's
    page.frame_locator(FRAME + " >> iframe").locator("h1", has_text="Rules").wait_for()
    page.goto("/redirects/api/rules")
    assert page.locator("body").inner_text().startswith('{"rules"')


# -- the apps page --------------------------------------------------------------------------


def test_apps_page_uploads_by_drag_and_drop_and_deletes_a_version(page: Any, runtime: Any) -> None:
    page.goto("/cpanel/apps")
    page.locator("#apps-rows tr[data-app=hello]").wait_for()
    assert "this console" in page.locator("tr[data-app=cpanel]").inner_text()
    assert page.locator("tr[data-app=cpanel] .chip-delete").count() == 0

    # drop an archive on the page, as a person dragging a file from their desktop
    payload = list(archive("dropped", "1.2.0"))
    page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], 'dropped-1.2.0.zip',
                                  { type: 'application/zip' });
            const data = new DataTransfer();
            data.items.add(file);
            const zone = document.getElementById('dropzone');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true,
                                                         cancelable: true }));
            }
        }""",
        payload,
    )
    page.locator(".toast", has_text="Installed dropped@1.2.0").wait_for()
    row = page.locator("tr[data-app=dropped]")
    row.locator(".chip[data-version='1.2.0']").wait_for()
    assert (runtime.uploads / "dropped" / "1.2.0" / "index.html").exists()
    # the file picker works too, and a second version joins the row
    page.locator("#upload-input").set_input_files(
        files=[
            {
                "name": "dropped-2.0.0.zip",
                "mimeType": "application/zip",
                "buffer": archive("dropped", "2.0.0"),
            }
        ]
    )
    row.locator(".chip[data-version='2.0.0']").wait_for()
    # a file that is no archive is refused before it is sent
    page.locator("#upload-input").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}]
    )
    page.locator(".drop-status.error", has_text="notes.txt is not an app archive").wait_for()

    # delete one version: the dialog asks first
    row.get_by_role("button", name="Delete dropped@1.2.0").click()
    dialog = page.locator("dialog.dialog")
    assert "Delete dropped@1.2.0?" in dialog.inner_text()
    dialog.get_by_role("button", name="Cancel").click()
    assert row.locator(".chip[data-version='1.2.0']").count() == 1
    row.get_by_role("button", name="Delete dropped@1.2.0").click()
    page.locator("dialog.dialog").get_by_role("button", name="Delete version").click()
    page.locator(".toast", has_text="Deleted dropped@1.2.0").wait_for()
    row.locator(".chip[data-version='1.2.0']").wait_for(state="detached")
    assert not (runtime.uploads / "dropped" / "1.2.0").exists()
    assert (runtime.uploads / "dropped" / "2.0.0").exists()
    runtime.request("DELETE", "/api/apps/_/dropped")


def test_apps_page_shows_live_workers(page: Any, runtime: Any) -> None:
    page.goto("/cpanel/apps")
    row = page.locator("tr[data-app=routes-demo]")
    row.wait_for()
    assert "None" in row.locator(".workers-cell").inner_text()
    page.request.get("/routes-demo/")  # starts the app's worker
    row.locator(".workers-cell", has_text="1 live").wait_for(timeout=15_000)
    # its one request, counted in the singular
    row.locator(".workers-cell", has_text=re.compile(r"· 1 request$")).wait_for(timeout=15_000)


# -- a phone --------------------------------------------------------------------------------


def test_phone_layout_has_a_drawer_and_no_sideways_scroll(browser: Any, runtime: Any) -> None:
    context = browser.new_context(viewport=PHONE, base_url=runtime.url, is_mobile=True)
    try:
        page = context.new_page()
        page.goto("/cpanel/apps")
        page.locator("#apps-rows tr[data-app=hello]").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert not nav(page, "Overview").is_visible()
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / "shell-phone-apps.png"))
        page.get_by_role("button", name="Open navigation").click()
        nav(page, "Overview").wait_for(state="visible")
        page.wait_for_timeout(300)  # the drawer slides in
        page.screenshot(path=str(IMAGES / "shell-phone-navigation.png"))
        nav(page, "Proxy").click()
        page.wait_for_url("**/cpanel/redirects")
        frame_ready(page)
        nav(page, "Overview").wait_for(state="hidden")  # the drawer closed
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        context.close()


def test_phone_drawer_by_keyboard(browser: Any, runtime: Any) -> None:
    """The drawer opened from the keyboard takes the focus; Escape closes it and gives it back."""
    context = browser.new_context(viewport=PHONE, base_url=runtime.url, is_mobile=True)
    try:
        page = context.new_page()
        page.goto("/cpanel/")
        page.wait_for_function("document.documentElement.dataset.shell === 'ready'")
        page.focus("#open-nav")
        page.keyboard.press("Enter")
        nav(page, "Overview").wait_for(state="visible")
        focused = "document.activeElement.closest('#sidebar') !== null"
        assert page.evaluate(focused), "the focus stayed behind the drawer"
        page.keyboard.press("Tab")
        assert page.evaluate(focused)
        page.keyboard.press("Escape")
        nav(page, "Overview").wait_for(state="hidden")
        assert page.evaluate("document.activeElement.id") == "open-nav"
    finally:
        context.close()


# -- screenshots for docs/ ------------------------------------------------------------------


def test_screenshots_of_the_shell_for_the_docs(page: Any, runtime: Any) -> None:
    """docs/shell.md shows these; the suite retakes them so they stay current."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.goto("/cpanel/")
    page.locator("#stat-apps .stat-value", has_text=re.compile(r"\d")).wait_for()
    page.locator("#worker-rows tr[data-worker]").first.wait_for()  # routes-demo's, started above
    page.wait_for_timeout(300)
    page.screenshot(path=str(IMAGES / "shell-overview.png"))
    page.goto("/cpanel/apps")
    page.locator("#apps-rows tr[data-app=hello]").wait_for()
    page.screenshot(path=str(IMAGES / "shell-apps.png"))
    runtime.request(
        "POST",
        "/redirects/api/rules",
        {
            "id": "legacy",
            "name": "legacy",
            "pattern": "^/legacy/(.*)",
            "target": "http://10.0.0.5:8080",
            "rewrite": "/$1",
        },
    )
    try:
        page.goto("/cpanel/redirects")
        frame_ready(page)
        page.frame_locator(FRAME + " >> iframe").locator("tr[data-rule=legacy]").wait_for()
        page.screenshot(path=str(IMAGES / "shell-plugin.png"))
    finally:
        runtime.request("DELETE", "/redirects/api/rules/legacy")
