"""What runs inside the serving container beside TorchServe: its entrypoint (a clean stop on
SIGTERM), the health checks behind HEALTHCHECK and the Kubernetes probes, the preStop drain, and
the key file they read. Standard library only: the slim image has no other package for them."""
