"""
The connection layer: every HTTP/1.1 connection the runtime accepts.

One L{HTTP1Connection} per client, one C{httptools} (llhttp) parser per
connection.  It reads request heads and bodies strictly and within bounds
(L{Limits}), answers what it refuses itself (400, 408, 413, 414, 417, 431,
501, 505), and hands each well-formed request to the front door as an
L{Exchange}, one at a time and in order (pipelining), writing each answer
with the framing it owes the client.  The one hand-over is a WebSocket
upgrade (L{Exchange.hand_over}).
"""

from buntime.web.http1.connection import HTTP1Connection
from buntime.web.http1.exchange import Exchange, HandedOver
from buntime.web.http1.factory import HTTP1Factory
from buntime.web.http1.head import Head, Refusal
from buntime.web.http1.limits import Limits

__all__ = ["Exchange", "HTTP1Connection", "HTTP1Factory", "HandedOver", "Head", "Limits", "Refusal"]
