"""Turning other test suites' descriptions into rigs (`kvmrig import`)."""
