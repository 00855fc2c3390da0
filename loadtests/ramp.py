"""Ramp: users step up until a step breaks the service level; the last step that held is the capacity.

    python -m locust --config loadtests/ramp.conf [--ramp-step-users 4 --ramp-step-time 30 ...]

No operator: changing the worker count would change the capacity being measured. Service levels:
the first step held, and no answer broke the API's contract in any step (overload answers such as
503 in the breaking step are the finding).
"""

from loadtests.shapes import RampShape  # noqa: F401  (Locust finds users and shapes by name here)
from loadtests.users import ClassifierUser  # noqa: F401
