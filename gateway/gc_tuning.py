"""Garbage-collector settings for a long-running server with many small, short-lived objects.

Measured on the load harness (bench/): with CPython's defaults, collections of
the older generations traverse every object the process holds (imported
libraries, the config, pydantic models) and stall the event loop, which showed
as a p99 of 70 ms at 32 connections against a p50 of 13 ms. Freezing what
exists once the app has started removes those objects from every later
collection, and a higher first threshold makes collections rarer. Reference
cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 50, 100)


def tune_for_serving() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
