"""
Finding an app's entrypoint: the one rule the runtime and the worker share.

An entrypoint is a path to a file inside the app dir, optionally followed by
C{:attr}.  The attribute is what follows the last colon of the path's last
segment, so C{app.py:application} and C{pkg/mod.py:factory} name one, while
a colon in a directory name (C{v1:2/app.py}) belongs to the path.  A file
whose own name holds a colon cannot be an entrypoint.

This module stays light: the worker imports it before the app.
"""

from __future__ import annotations

import os
import re

AUTO_ENTRYPOINTS = ("index.html", "app.py", "main.py", "index.py")
"""Entrypoints looked for, in order, when none is given."""

SUFFIXES = (".py", ".html")
"""What an entrypoint may be: a Python app or a static app."""

_ATTRIBUTE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_SEPARATORS = re.compile(r"[/\\]")


class EntrypointError(Exception):
    """The app's entrypoint is missing, malformed or points outside the app dir."""


def split(declared: str) -> tuple[str, str | None]:
    """
    The file part and the attribute (C{None} without one) of C{declared}:
    the attribute follows the last colon after the last path separator.
    """
    last_segment = _SEPARATORS.split(declared)[-1]
    if ":" not in last_segment:
        return declared, None
    file_part, _, attribute = declared.rpartition(":")
    return file_part, attribute


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve(
    app_dir: str,
    declared: str | None,
    *,
    suffixes: tuple[str, ...] = SUFFIXES,
    absolute: bool = False,
) -> tuple[str, str | None]:
    """
    The absolute path of the app's entrypoint file and the attribute to load
    (L{split} says which is which).  Without C{declared}, the first of
    L{AUTO_ENTRYPOINTS} with one of C{suffixes} that exists.

    @param suffixes: the kinds of file accepted (a worker runs C{.py} only).
    @param absolute: also accept an absolute path inside the app dir, as
        the runtime gives a worker its C{ENTRYPOINT}.
    @raise EntrypointError: absolute paths, C{..} escapes (also through
        symlinks), missing files, or a file without one of C{suffixes}.
    """
    if not declared:
        return resolve(app_dir, _found(app_dir, suffixes), suffixes=suffixes)
    file_part, attribute = split(declared)
    if attribute is not None and _ATTRIBUTE.match(attribute) is None:
        raise EntrypointError(f'Invalid entrypoint "{declared}": "{attribute}" is not an attribute')
    if not file_part or "\0" in file_part:
        raise EntrypointError(f'Invalid entrypoint "{declared}": no file named')
    path = _inside_path(app_dir, declared, file_part, absolute)
    if not path.endswith(suffixes):
        kinds = " or ".join(suffixes)
        raise EntrypointError(f'Invalid entrypoint "{declared}": must be a {kinds} file')
    if not os.path.isfile(path):
        raise EntrypointError(f'Entrypoint "{declared}" not found in {app_dir}')
    if attribute is not None and path.endswith(".html"):
        raise EntrypointError(f'Invalid entrypoint "{declared}": an .html file has no attributes')
    return path, attribute


def _found(app_dir: str, suffixes: tuple[str, ...]) -> str:
    """The first of L{AUTO_ENTRYPOINTS} with one of C{suffixes} that is in C{app_dir}."""
    candidates = [name for name in AUTO_ENTRYPOINTS if name.endswith(suffixes)]
    for candidate in candidates:
        if os.path.isfile(os.path.join(app_dir, candidate)):
            return candidate
    raise EntrypointError(
        f"No entrypoint found in {app_dir}: add one of {', '.join(candidates)}"
        " or set entrypoint in the manifest"
    )


def _inside_path(app_dir: str, declared: str, file_part: str, absolute: bool) -> str:
    """
    The absolute path C{file_part} names in C{app_dir}; L{EntrypointError}
    when it is absolute (unless C{absolute} and inside), or leaves the app
    directory by C{..} or a symlink.
    """
    root = os.path.abspath(app_dir)
    if absolute and os.path.isabs(file_part):
        relative = os.path.relpath(file_part, root)
        if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
            file_part = relative
    if os.path.isabs(file_part) or file_part.startswith(("/", "\\")):
        raise EntrypointError(
            f'Invalid entrypoint "{declared}": must be a path relative to the app directory'
        )
    parts = _SEPARATORS.split(file_part)
    if ".." in parts:
        raise EntrypointError(f'Invalid entrypoint "{declared}": must not leave the app directory')
    path = os.path.normpath(os.path.join(root, *parts))
    if not _inside(os.path.realpath(root), os.path.realpath(path)):
        raise EntrypointError(
            f'Invalid entrypoint "{declared}": resolves outside the app directory (symlink)'
        )
    return path
