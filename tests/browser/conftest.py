"""
Fixtures of the browser tests (see C{harness.py}).

- C{runtime}: one C{twistd -n buntime} per test module, with the shell
  as its homepage (C{RUNTIME_HOMEPAGE=cpanel}), the repository's apps, the
  frame protocol's test pages, the proxy built-in turned on and a demo plugin;
  uploads go to a temporary worker dir of their own.
- C{browser}: headless Chromium; the tests skip when it or Playwright is missing.
  Module-scoped on purpose: Playwright's sync API keeps an asyncio loop
  marked as running in this thread while it is open, which would break the
  asyncio tests that run after the browser's.
- C{page}: a fresh page at 1280x800 whose console errors fail the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import DESKTOP, BrowserRuntime, launch, missing, shell_runtime


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def runtime(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserRuntime]:
    started = shell_runtime(tmp_path_factory.mktemp("shell"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def page(browser: Any, runtime: BrowserRuntime) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP, base_url=runtime.url)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
