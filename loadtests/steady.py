"""Steady load: Locust's -u users (-r spawn rate) for -t, one of them the operator scaling workers.

    python -m locust --config loadtests/steady.conf            # what `make loadtest` runs
    python -m locust --config loadtests/steady.conf -u 16 -t 2m --host http://torchserve:8080
    python -m locust -f loadtests/steady.py ClassifierUser ...  # without the operator

Service levels: no request fails, every bad payload gets its 400, p99 of valid predictions under --p99-ms.
"""

from loadtests.shapes import SteadyShape  # noqa: F401  (Locust finds users and shapes by name here)
from loadtests.users import ClassifierUser, OperatorUser  # noqa: F401
