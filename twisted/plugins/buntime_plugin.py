"""Makes C{twistd buntime} available."""

from twisted.application.service import ServiceMaker

buntime = ServiceMaker(
    "buntime",
    "buntime.tap",
    "A multi-app HTTP runtime: one port, many apps, each in its own worker process.",
    "buntime",
)
