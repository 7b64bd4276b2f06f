"""
The eliot action and message types buntime logs, declared as flocker
declares its own: each names its fields, and a test can validate what was
logged against them (C{eliot.testing.validate_logging}).

Every message also carries C{level} and C{message} (the sentence a person
reads); the formatters add C{context} (C{runtime} unless a message names
another speaker).
"""

from __future__ import annotations

from eliot import ActionType, Field, MessageType

LEVEL = Field.for_types("level", [str], "debug, info, warn or error.")
MESSAGE = Field.for_types("message", [str], "What happened, for a person to read.")
_SAID = [LEVEL, MESSAGE]

# -- HTTP requests ---------------------------------------------------------------

REQUEST_ID = Field.for_types("request_id", [str], "The request's x-request-id.")
METHOD = Field.for_types("method", [str], "The request's method.")
PATH = Field.for_types("path", [str], "The request's path, never its query string.")
STATUS = Field.for_types("status", [int], "The answer's status.")
DURATION_MS = Field.for_types("duration_ms", [float, int], "From the head to the answer's end.")
ABORTED = Field.for_types("aborted", [bool], "The client went away before the answer was out.")

HTTP_REQUEST = ActionType(
    "buntime:http:request",
    [REQUEST_ID, METHOD, PATH, LEVEL, MESSAGE],
    [REQUEST_ID, METHOD, PATH, STATUS, DURATION_MS, ABORTED, LEVEL, MESSAGE],
    "One HTTP request, from its head to the end of its answer.  Logged by"
    " buntime.logs.requests without eliot's per-message costs; the end also"
    " names the app, the worker and an upgrade when there is one.",
)

# -- workers ----------------------------------------------------------------------

APP = Field.for_types("app", [str], "The app's name.")
VERSION = Field.for_types("version", [str], "The app's version.")
WORKER_ID = Field.for_types("worker_id", [str], "The worker's id.")
PID = Field.for_types("pid", [int, None], "The worker's process id, once known.")
EPHEMERAL = Field.for_types("ephemeral", [bool], "A worker for one request (ttl 0).")
KIND = Field.for_types("kind", [str, None], "What the app is: asgi, wsgi, klein, resource, routes.")
STARTUP_MS = Field.for_types("startup_ms", [int, float], "From the launch to Ready.")
REASON = Field.for_types("reason", [str], "Why it happened.")
ERROR = Field.for_types("error", [str], "The failure, in one line.")
DETAIL = Field.for_types("detail", [str], "The failure's traceback.")
_WORKER = [APP, VERSION, WORKER_ID, PID]

WORKER_START = ActionType(
    "buntime:worker:start",
    [*_SAID, *_WORKER, EPHEMERAL],
    [*_SAID, *_WORKER, KIND, STARTUP_MS],
    "A worker process starting, until its app is loaded (it fails with the startup error).",
)

WORKER_START_FAILED = MessageType(
    "buntime:worker:start-failed",
    [*_SAID, *_WORKER, ERROR, DETAIL],
    "Why a worker's app could not be loaded (inside its start action).",
)

WORKER_RETIRE = ActionType(
    "buntime:worker:retire",
    [*_SAID, *_WORKER, REASON],
    [*_SAID, *_WORKER],
    "A worker taken out of service: drained, terminated, gone.",
)

WORKER_CRASH = MessageType(
    "buntime:worker:crash",
    [*_SAID, *_WORKER, REASON],
    "A worker gone before it was asked to go (inside the retire action that follows).",
)

# -- installs and plugins -----------------------------------------------------------

FILENAME = Field.for_types("filename", [str], "The uploaded archive's name.")
TARGET = Field.for_types("path", [str], "Where it was installed.")
PLUGIN = Field.for_types("plugin", [str], "The plugin's name.")
BASE = Field.for_types("base", [str, None], "Where the plugin is mounted.")

APP_INSTALL = ActionType(
    "buntime:apps:install",
    [*_SAID, FILENAME],
    [*_SAID, APP, VERSION, TARGET],
    "An app archive unpacked into a worker dir (it fails with the refusal: its code, at warn).",
)

PLUGIN_LOAD = ActionType(
    "buntime:plugins:load",
    [*_SAID, PLUGIN],
    [*_SAID, PLUGIN, BASE],
    "A plugin started: its on_init run and its routes mounted.",
)
