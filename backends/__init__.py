"""Backends: one module per engine or provider, all behind `backends.base.Backend`."""
