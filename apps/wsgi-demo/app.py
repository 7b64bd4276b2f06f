"""A Flask app served by buntime: any WSGI callable named ``app`` works."""

import time

from flask import Flask, Response, request, url_for

app = Flask(__name__)


@app.get("/")
def index():
    # url_for knows the app's base (/wsgi-demo@1 ...): buntime sets SCRIPT_NAME.
    return {"hello": "from Flask", "echo": url_for("echo"), "base": request.script_root}


@app.post("/echo")
def echo():
    return Response(request.get_data(), content_type="application/octet-stream")


@app.get("/stream")
def stream():
    """Chunks reach the client as they are produced."""

    def lines():
        for number in range(3):
            yield f"line {number}\n"
            time.sleep(0.1)

    return Response(lines(), content_type="text/plain")
