"""The logs built-in plugin: the runtime's recent log messages, queried, streamed and shown."""
