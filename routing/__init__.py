"""Routing: the config, the runtime built from it, plans, and the router (retries, breakers, failover,
continuation, the last resort). Imports backends and their contract, never the HTTP gateway above it."""
