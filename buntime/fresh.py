"""
Importing a file from its source as it is now, never from a cached C{.pyc}.

A C{.pyc} is trusted when the source's modification time (in whole seconds)
and size match the ones it recorded, so a file rewritten within the same
second with the same length (C{version = 1} becoming C{version = 2}) would run
the old code.  Plugin and app entry files are small and are reloaded exactly
when they change, so they are compiled from source every time instead.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from types import CodeType


class SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """A source loader that neither reads nor writes the bytecode cache."""

    def get_code(self, fullname: str) -> CodeType:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def spec_from_source(name: str, path: str) -> importlib.machinery.ModuleSpec | None:
    """The spec importing module C{name} from the source file C{path}."""
    return importlib.util.spec_from_file_location(name, path, loader=SourceOnlyLoader(name, path))
