"""The fleet drill: replicas of the Kubernetes pod (TorchServe + the nginx gateway) behind HAProxy on
this machine, put through a rolling update, a kill -9 and a scale-up under Locust's load.

`python -m fleet.drill` (make fleet-drill) writes reports/fleet/; docs/kubernetes.md explains it.
"""
