"""
The reliability suite (C{tests/reliability/}): trust, bad input (hypothesis)
and the sandbox, in process and against real runtimes; limits, worker
faults and a soak, each against real C{twistd -n buntime} processes on
127.0.0.1, with what it measured printed (run with C{-s} to see the figures)
and asserted.
Shared tools are in C{reliability_procs.py}; the C{runtimes} fixture comes
from C{tests/conftest.py}.
"""

from __future__ import annotations

import pytest
from reliability_procs import PROC


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is end-to-end and reads /proc."""
    for item in items:
        if "tests/reliability/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
            if not PROC:
                item.add_marker(pytest.mark.skip(reason="needs Linux /proc to measure processes"))
