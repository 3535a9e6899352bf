"""Backends: one module or folder per engine or provider, all behind `backends.base.Backend`, over the
OpenAI contract in `backends.contract`. Imports nothing of routing or the gateway."""
