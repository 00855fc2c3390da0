"""Spike: low load, a sudden jump to high load, and back; the service must recover.

    python -m locust --config loadtests/spike.conf [--spike-high-users 48 --spike-after 60 ...]

Service levels: no request fails at any time, every bad payload gets its 400, and p99 of valid
predictions is under --p99-ms before and after the spike.
"""

from loadtests.shapes import SpikeShape  # noqa: F401  (Locust finds users and shapes by name here)
from loadtests.users import ClassifierUser, OperatorUser  # noqa: F401
