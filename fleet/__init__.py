"""The fleet drill (`make fleet-drill`; docs/kubernetes.md): replicas of the Kubernetes pod behind HAProxy
playing a Service, under Locust's load (fleet.drill); one pod's capacity in a limited container (fleet.capacity).
"""
