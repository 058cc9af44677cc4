"""apideck-proxy: a local sidecar that coalesces Apideck connection token refreshes."""

__version__ = "0.1.0"
