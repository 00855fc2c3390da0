"""Locust scenarios for the CIFAR-10 service: steady, ramp and spike (see README: Load testing)."""
