"""The HTTP side: the ASGI app and its lifecycle, middleware and API keys, the error mapping,
client-disconnect handling for responses, and the Kubernetes health probes."""
