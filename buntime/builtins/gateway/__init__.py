"""The gateway built-in plugin: rate limiting, CORS, a response cache and shell routing."""
