"""A Klein app served by buntime: a ``klein.Klein`` named ``app`` works."""

from klein import Klein
from twisted.internet import reactor
from twisted.internet.task import deferLater

app = Klein()


@app.route("/")
def index(request):
    return "Hello from Klein!"


@app.route("/hello/<name>")
def hello(request, name):
    request.setHeader("content-type", "text/plain; charset=utf-8")
    return f"Hello, {name}!"


@app.route("/later")
def later(request):
    """Handlers may return Deferreds: Twisted all the way down."""
    return deferLater(reactor, 0.05, lambda: b"done later")
