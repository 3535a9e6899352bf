"""Tests of backends/: the contract, each provider and engine, the simulators they are tested against."""
