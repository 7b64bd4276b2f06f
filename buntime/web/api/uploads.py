"""
File uploads to the core API: the archive in a C{multipart/form-data} body.

twisted.web's own form parsing drops the file name (and buntime turns it off
anyway), so the body is parsed here with the C{multipart} package.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import IO, Any

from multipart import MultipartError, MultipartParser, parse_options_header
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

from buntime.archive import InstallError
from buntime.logs import log

UPLOAD_FIELD = "file"
MAX_PARTS = 16

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    UPLOAD_FIELD: {
                        "type": "string",
                        "contentMediaType": "application/octet-stream",
                        "description": "The archive: .zip, .tgz or .tar.gz",
                    }
                },
                "required": [UPLOAD_FIELD],
            }
        }
    },
}
"""The OpenAPI request body of an archive upload (apps and plugins alike)."""


def uploaded_file(content_type: str, content: IO[bytes]) -> tuple[str, IO[bytes]]:
    """
    The file name (without any directory) and contents of the multipart
    field C{file}.

    @raise InstallError: C{NO_FILE_PROVIDED} when there is none,
        C{BAD_REQUEST} when the body is not well-formed multipart.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise InstallError(
            "NO_FILE_PROVIDED", f"Send the archive as multipart/form-data field {UPLOAD_FIELD!r}"
        )
    content.seek(0)
    try:
        for part in MultipartParser(content, boundary, part_limit=MAX_PARTS):
            if part.name != UPLOAD_FIELD:
                continue
            if not part.filename and part.size == 0:
                break
            if part.filename is None:
                raise InstallError(
                    "NO_FILE_PROVIDED", f"Field {UPLOAD_FIELD!r} must be a file upload"
                )
            part.file.seek(0)
            return part.filename.replace("\\", "/").rsplit("/", 1)[-1], part.file
    except MultipartError as e:
        raise InstallError("BAD_REQUEST", f"Malformed multipart body: {e}") from None
    except OSError as error:  # a file over 64 KiB is read into a temporary file first
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        raise _NotKept(error.strerror or str(error), full) from None
    raise InstallError("NO_FILE_PROVIDED", f"No file in the multipart field {UPLOAD_FIELD!r}")


class _NotKept(InstallError):
    """
    An upload the temporary directory refused (none usable, or full), for
    C{reason}: logged in one line by L{off_the_reactor}, on the reactor thread.
    """

    def __init__(self, reason: str, full: bool) -> None:
        message = f"The upload could not be kept in the temporary directory (TMPDIR): {reason}"
        if full:
            super().__init__("INSUFFICIENT_STORAGE", f"{message}; nothing changed", 507)
        else:
            super().__init__("INTERNAL_ERROR", f"{message}; nothing changed", 500)
        self.reason = reason


async def off_the_reactor(
    threads: IReactorThreads | None, function: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """
    Call C{function} (disk work of an install) in the reactor's thread pool
    when there is one.  An upload the temporary directory refused is logged
    here, back on the reactor thread and in the request's task: eliot's
    destinations are not written from other threads.
    """
    try:
        if threads is None:
            return function(*args, **kwargs)
        return await deferToThreadPool(threads, threads.getThreadPool(), function, *args, **kwargs)
    except _NotKept as error:
        log(
            "error",
            "buntime:uploads:tempdir-failed",
            f"An upload could not be kept in the temporary directory (TMPDIR): {error.reason}",
        )
        raise
