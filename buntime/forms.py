"""
Forms POSTed to twisted.web resources: plugin routes rendered in the
runtime (L{buntime.plugins.rendering}), Klein and twisted.web apps in a
worker (L{buntime.pool.child.web}).

twisted.web answers a malformed C{multipart/form-data} body through a
private method of its channel, which buntime's in-memory channels do not
have; so its parsing is off, and L{FormRequest} fills C{request.args} as
it would, answering such a body 400 itself.

L{FormRequest} also lets the body of an answer to C{HEAD} through, as for
C{GET}: the connection sends none, and says its length (twisted.web would
drop it unmeasured, and a Klein route's C{HEAD} would say 0).
"""

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage, Message
from typing import Any

from twisted.web.http import parse_qs
from twisted.web.server import Request

Form = dict[bytes, list[bytes]]


def parse_form(content_type: bytes, body: bytes) -> Form | None:
    """
    The fields of a POSTed C{body} as twisted.web puts them in
    C{request.args}: a URL-encoded or multipart form's, none for any other
    type or an empty body.  C{None}: the body is not the multipart it says
    it is.
    """
    if not body:
        return {}
    kind = EmailMessage()
    kind["content-type"] = content_type.decode("latin-1")
    if kind.get_content_type() == "application/x-www-form-urlencoded":
        return parse_qs(body, 1)
    if kind.get_content_type() != "multipart/form-data":
        return {}
    head = b"MIME-Version: 1.0\r\nContent-Type: " + content_type + b"\r\n"
    message = message_from_bytes(head + body)
    if not message.is_multipart():
        return None
    fields: Form = {}
    for part in message.get_payload():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if name and isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields.setdefault(name.encode("utf-8"), []).append(payload)  # type: ignore[arg-type]
    return fields


class FormRequest(Request):
    """
    A twisted.web request whose POSTed form (L{parse_form}) buntime parses,
    and whose answer to C{HEAD} keeps the body the resource writes.  A body
    that is not the multipart it says is answered 400 with C{bad_form} (its
    content type and body): twisted.web's plain one here.
    """

    bad_form: tuple[bytes, bytes] = (b"text/plain", b"Bad Request")

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, parsePOSTFormSubmission=False, **kwargs)

    def write(self, data: bytes) -> None:
        if self.method == b"HEAD" and not self.startedWriting:
            # twisted.web drops what a HEAD answer writes after its headers:
            # the connection does, once it has taken the body's length.
            self.method = b"GET"
            try:
                super().write(data)
            finally:
                self.method = b"HEAD"
        else:
            super().write(data)

    def process(self) -> None:
        content_type = self.requestHeaders.getRawHeaders(b"content-type")
        content = self.content
        if self.method == b"POST" and content_type and content is not None:
            content.seek(0)
            form = parse_form(content_type[0], content.read())
            content.seek(0)
            if form is None:
                kind, answer = self.bad_form
                self.setResponseCode(400)
                self.setHeader(b"content-type", kind)
                self.write(answer)
                self.finish()
                return
            args = self.args
            assert args is not None  # requestReceived has set it to the query's
            args.update(form)  # as twisted.web does: the body's fields over the query's
        super().process()

    def getRequestHostname(self) -> bytes:
        """
        The C{Host} header's name when it is a name resources can route by
        (Klein binds werkzeug's routes with it, as IDNA, and failed with a
        500 on C{Host: ..rt}), else the address the request came to, else
        C{localhost}.
        """
        for name in (super().getRequestHostname(), str(self.getHost().host).encode("latin-1")):
            try:
                name.decode("ascii").encode("idna")
            except UnicodeError:
                continue
            return name
        return b"localhost"
