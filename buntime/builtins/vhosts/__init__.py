"""The vhosts built-in plugin: serve an app at a host name."""
