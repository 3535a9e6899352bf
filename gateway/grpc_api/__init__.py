"""The gateway's gRPC API for internal callers (`server.grpc`), next to the HTTP one and off by default.

Nothing here imports grpc at import time of the gateway: the server is built only when the config turns
it on, so the HTTP gateway runs without the `grpc` extra installed."""
