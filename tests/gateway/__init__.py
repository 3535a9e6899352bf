"""Tests of gateway/: auth, keys, limits, cache, exposure, hostile clients, observability."""
