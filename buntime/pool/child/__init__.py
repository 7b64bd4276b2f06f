"""
The worker process: C{python -m buntime.pool.child} (or forked from the
template, L{buntime.pool.launch.template}).

It loads one app (L{loader}), speaks AMP with the runtime on fds 3 and 4
(L{protocol}) and serves each request through the adapter for the app's kind:
L{asgi}, L{wsgi}, L{web} (Klein and twisted.web resources) or L{routes}.
Nothing here imports C{twisted.internet.reactor} at import time, so the fork
template can import it all before a reactor exists.
"""
