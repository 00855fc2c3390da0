"""Locust scenarios for the CIFAR-10 service: steady, ramp and spike (see docs/load-testing.md)."""
