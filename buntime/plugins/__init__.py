"""
Plugins (SPEC §5): finding them (C{discovery}), reading their manifests
(C{manifest}, C{publicroutes}), loading them in dependency order
(C{loader}), the loaded set and its request-path API (C{registry},
C{rendering}), what C{on_init} gets (C{context}), the service that owns the
set (C{service}) and the C{/api/plugins} routes (C{api}, C{install}).
"""
