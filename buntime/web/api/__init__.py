"""
The runtime's HTTP API under C{/api}: the core (C{core}), apps
(C{apps}), plugins (C{plugins}), their uploads (C{uploads}) and the
OpenAPI document describing them all (C{openapi}).
"""
