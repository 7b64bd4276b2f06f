"""The metrics built-in plugin: pool and HTTP numbers as JSON, Prometheus text and a live page."""
