"""Routing: the gateway's config schema, and (in later issues) strategies and failover."""
