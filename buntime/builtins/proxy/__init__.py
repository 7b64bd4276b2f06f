"""The built-in reverse proxy, C{@buntime/plugin-proxy} (see C{docs/plugins.md})."""
