"""Tests of routing/: config, plans, failover, breakers, load."""
