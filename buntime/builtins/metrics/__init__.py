"""The metrics built-in plugin: pool metrics and per-worker stats as JSON."""
