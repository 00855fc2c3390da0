"""The fleet drill: replicas of the Kubernetes pod (TorchServe + the nginx gateway) behind HAProxy
playing a Service, put through a rolling update, a kill -9, a scale-up and an overload under
Locust's load; and one pod's capacity measured in a container limited like the pod.

`make fleet-drill` (python -m fleet.capacity, then python -m fleet.drill) writes reports/fleet/;
docs/kubernetes.md explains it.
"""
