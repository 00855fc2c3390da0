"""What the load generator sends and how it judges each answer: options, keys, the two users.

Every request is named by its group, so that the reports and the service levels can tell them apart:
`predict <kind> <transport>` (a valid image, must get a valid classification), `bad <what>
<transport>` (must get HTTP 400 with a JSON error) and `manage <action>` (the operator's calls).
A failure is either a wrong answer (`WrongAnswer`: the API broke its contract) or a sign of
overload (HTTP 429/503/507, a timeout, a refused connection); the ramp tells the two apart.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from locust import FastHttpUser, events, task
from urllib3 import encode_multipart_formdata

from loadtests.payloads import CONTENT_TYPES, DEFAULT_FOLDER, bad_payloads, load
from serve.answers import answer_problem
from serve.keys import read_keys

# Share of the valid requests by kind: mostly CIFAR-10's own 32 px images, some larger photos.
MIX = {"jpeg-32": 60, "jpeg-224": 10, "png-224": 5, "jpeg-640": 10, "png-640": 5, "jpeg-1600": 6, "png-1600": 4}
TRANSPORTS = ("raw", "multipart")  # the raw body (curl -T) or a multipart field `image` (curl -F image=@...)
OVERLOAD_STATUSES = {429, 503, 507}
DEFAULT_P99_MS = 250  # set from a measured ramp: docs/load-testing.md says how

log = logging.getLogger("loadtests")


class WrongAnswer(Exception):
    """An answer that breaks the API's contract, as opposed to one that shows overload."""


def group_of(request_name: str) -> str:
    return request_name.split(" ", 1)[0]


# The scenarios' own options: (name, type, default, help[, more of argparse's keywords]). Each also
# reads an environment variable, LOADTEST_<NAME> (e.g. LOADTEST_RAMP_STEP_TIME), and Locust's --config files.
OPTIONS = (
    ("management-url", str, "", "TorchServe's management API (default: the --host with its port + 1)"),
    ("model", str, "cifar10", "model name"),
    ("key-file", str, "key_file.json", "TorchServe's key_file.json, where `make serve` writes it; without it and "
     "without --*-key, requests carry no key (token auth off)"),
    ("inference-key", str, "", "inference key (default: the key file's)", {"is_secret": True}),
    ("management-key", str, "", "management key (default: the key file's)", {"is_secret": True}),
    ("payloads", str, str(DEFAULT_FOLDER), "payload folder built by `make payloads`"),
    ("bad-share", float, 0.05, "share of requests that carry an invalid payload"),
    ("p99-ms", float, DEFAULT_P99_MS, "service level: p99 bound of valid predictions in ms"),
    ("operator-interval", float, 10, "seconds between two worker changes by the operator"),
    ("operator-workers", int, 0, "workers the operator scales up to (default: the count it finds + 1)"),
    ("operator-mode", str, "up", "up: the operator scales up under load, then reads the description each interval, "
     "and the count is put back after the load; up-down: it alternates scaling up and back down under load, where "
     "TorchServe 0.12 fails the batch in flight on the removed worker (docs/load-testing.md)",
     {"choices": ["up", "up-down"]}),
    ("summary", str, "", "Markdown summary file (default: summary.md beside the --csv files)"),
    ("ramp-start-users", int, 2, "ramp: users of the first step"),
    ("ramp-step-users", int, 2, "ramp: users added at each step"),
    ("ramp-step-time", float, 20, "ramp: seconds per step"),
    ("ramp-max-users", int, 64, "ramp: users of the last step, if no step breaks before"),
    ("spike-low-users", int, 4, "spike: users before and after the spike, the operator included"),
    ("spike-high-users", int, 32, "spike: users during the spike, the operator included"),
    ("spike-before", float, 20, "spike: seconds of low load before the spike"),
    ("spike-duration", float, 20, "spike: seconds of the spike"),
    ("spike-after", float, 30, "spike: seconds of low load after the spike, to recover"),
)  # fmt: skip


@events.init_command_line_parser.add_listener
def add_options(parser):
    for name, kind, default, text, *more in OPTIONS:
        text = text if "default:" in text else f"{text} (default: {default})"
        environment = "LOADTEST_" + name.upper().replace("-", "_")
        parser.add_argument(
            f"--{name}", env_var=environment, type=kind, default=default, help=text, **(more or [{}])[0]
        )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def management_url(options, inference_host: str) -> str:
    if options.management_url:
        return options.management_url.rstrip("/")
    parsed = urlparse(inference_host)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{parsed.hostname}:{port + 1}"


@dataclass
class SharedSetup:
    """What every user of this process shares: payloads, keys and options (set up once, at init)."""

    options: object
    payloads: dict[str, list[bytes]]
    bad: dict[str, tuple[bytes, str]]
    inference_headers: dict[str, str]
    management_headers: dict[str, str]


SHARED: SharedSetup | None = None


@events.init.add_listener
def prepare(environment, **_kwargs):
    global SHARED
    options = environment.parsed_options
    if options is None:  # Locust used as a library: the caller sets SHARED
        return
    payloads = load(Path(options.payloads))
    keys = read_keys(Path(options.key_file))
    inference_key = options.inference_key or keys.get("inference", "")
    management_key = options.management_key or keys.get("management", "")
    if not (inference_key and management_key):
        log.warning(
            "no %s key (key file %s): sending requests without it",
            "inference" if not inference_key else "management",
            options.key_file,
        )
    SHARED = SharedSetup(options, payloads, bad_payloads(payloads), bearer(inference_key), bearer(management_key))


def error_problem(answer) -> str | None:
    """Why a 400 answer is not the JSON error the API promises (None when it is)."""
    if (
        not isinstance(answer, dict)
        or answer.get("code") != 400
        or not isinstance(answer.get("message"), str)
        or not answer["message"]
    ):
        return f"400 without the JSON error body: {str(answer)[:200]}"
    return None


def judge(response, expected_status: int, body_problem):
    """Marks a catch_response request as a success, a wrong answer or an overload failure; returns
    the JSON answer of a success, else None."""
    status = response.status_code
    if status != expected_status:
        if not status or status in OVERLOAD_STATUSES:  # 0: timeout or connection error
            response.failure(f"overloaded: HTTP {status} {getattr(response, 'error', '') or ''}".strip())
        else:
            response.failure(WrongAnswer(f"HTTP {status} (expected {expected_status}): {(response.text or '')[:200]}"))
        return None
    try:
        answer = response.json()
    except ValueError:
        response.failure(WrongAnswer(f"body is not JSON: {(response.text or '')[:200]}"))
        return None
    problem = body_problem(answer)
    if problem:
        response.failure(WrongAnswer(problem))
        return None
    response.success()
    return answer


class ClassifierUser(FastHttpUser):
    """A client that keeps one request in flight: the traffic mix, raw and multipart, some bad payloads."""

    host = "http://127.0.0.1:8080"  # `make serve`; --host (LOCUST_HOST) for any other deployment
    network_timeout = 60.0

    def on_start(self):
        self.random = random.Random()
        self.path = f"/predictions/{SHARED.options.model}"

    @task
    def classify(self):
        traffic = SHARED
        transport = self.random.choice(TRANSPORTS)
        if self.random.random() < traffic.options.bad_share:
            what = self.random.choice(list(traffic.bad))
            body, content_type = traffic.bad[what]
            self.send(f"bad {what} {transport}", body, content_type, transport, 400, error_problem)
        else:
            kind = self.random.choices(list(MIX), weights=list(MIX.values()))[0]
            body = self.random.choice(traffic.payloads[kind])
            content_type = CONTENT_TYPES[kind.split("-")[0]]
            self.send(f"predict {kind} {transport}", body, content_type, transport, 200, answer_problem)

    def send(self, name: str, body: bytes, content_type: str, transport: str, expected_status: int, body_problem):
        if transport == "multipart":
            body, content_type = encode_multipart_formdata({"image": ("image", body, content_type)})
        headers = {"Content-Type": content_type, **SHARED.inference_headers}
        with self.client.post(self.path, data=body, headers=headers, name=name, catch_response=True) as response:
            judge(response, expected_status, body_problem)


class OperatorUser(FastHttpUser):
    """One operator (whatever the user count) who, during the load, scales the model's workers up
    through the management API (and back down, with --operator-mode up-down) and checks the model's
    description every interval; at the end of the run the worker count is put back as it found it."""

    fixed_count = 1
    host = ClassifierUser.host
    network_timeout = 120.0  # a synchronous scale-up waits for the new worker to load the model
    found_workers: int | None = None  # before the first change; restored at the end of the run
    url = ""

    def wait_time(self):
        return SHARED.options.operator_interval

    def on_start(self):
        OperatorUser.url = f"{management_url(SHARED.options, self.host)}/models/{SHARED.options.model}"
        description = self.describe_model(expected_workers=None)
        if description is None:
            raise RuntimeError(f"the operator cannot describe the model at {OperatorUser.url}")
        if OperatorUser.found_workers is None:
            OperatorUser.found_workers = len(description["workers"])
        self.workers = len(description["workers"])
        self.scaled_workers = SHARED.options.operator_workers or OperatorUser.found_workers + 1
        self.wait()  # the first change comes one interval into the load, not before it

    @task
    def change_workers(self):
        if self.workers != OperatorUser.found_workers and SHARED.options.operator_mode == "up":
            self.describe_model(expected_workers=self.workers)
            return
        target = self.scaled_workers if self.workers == OperatorUser.found_workers else OperatorUser.found_workers
        params = f"min_worker={target}&max_worker={target}&synchronous=true"
        with self.client.put(
            f"{self.url}?{params}",
            headers=SHARED.management_headers,
            name=f"manage scale to {target}",
            catch_response=True,
        ) as response:
            judge(
                response,
                200,
                lambda answer: (
                    None if isinstance(answer, dict) and "status" in answer else f"unexpected scale answer: {answer}"
                ),
            )
        self.workers = target
        self.describe_model(expected_workers=target)

    def describe_model(self, expected_workers: int | None) -> dict | None:
        def description_problem(answer):
            if not (
                isinstance(answer, list)
                and answer
                and isinstance(answer[0], dict)
                and answer[0].get("modelName") == SHARED.options.model
                and isinstance(answer[0].get("workers"), list)
            ):
                return f"unexpected description: {str(answer)[:200]}"
            ready = sum(worker.get("status") == "READY" for worker in answer[0]["workers"])
            if expected_workers is not None and ready != expected_workers:
                return f"{ready} READY workers after scaling to {expected_workers}: {answer[0]['workers']}"
            return None

        with self.client.get(
            self.url, headers=SHARED.management_headers, name="manage describe", catch_response=True
        ) as response:
            answer = judge(response, 200, description_problem)
        return answer[0] if answer else None


@dataclass
class Restored:
    workers: int
    error: str | None


RESTORED: Restored | None = None


@events.test_stop.add_listener
def restore_workers(environment, **_kwargs):
    """Puts the worker count back as the operator found it (its last change may have been cut short)."""
    global RESTORED
    if OperatorUser.found_workers is None:
        return
    workers = OperatorUser.found_workers
    try:
        response = requests.put(
            OperatorUser.url,
            params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
            headers=SHARED.management_headers,
            timeout=120,
        )
        error = None if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:200]}"
    except requests.RequestException as exception:
        error = str(exception)
    RESTORED = Restored(workers, error)
    if error:
        log.error("could not restore %d workers: %s", workers, error)
    else:
        log.info("workers restored to %d", workers)
