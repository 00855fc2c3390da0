"""What the load generator sends and how it judges each answer: options, keys, the users.

Every request is named by its group, so that the reports and the service levels can tell them apart:
`predict <kind> <transport>` (a valid image, must get a valid classification), `bad <what>
<transport>` (must get HTTP 400 with a JSON error) and `manage <action>` (the operator's calls).
A failure is either a wrong answer (`WrongAnswer`: the API broke its contract) or a sign of
overload (HTTP 429/503/507, a timeout, a refused connection); the ramp tells the two apart.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import gevent
import requests
from locust import FastHttpUser, constant_throughput, events, task
from urllib3 import encode_multipart_formdata

from container.keys import read_keys
from harness.answers import answer_problem
from harness.other_work import add_noisy_option
from loadtests.payloads import CONTENT_TYPES, DEFAULT_FOLDER, bad_payloads, load
from repo import REPO

# Share of the valid requests by kind: mostly CIFAR-10's own 32 px images, some larger photos.
MIX = {"jpeg-32": 60, "jpeg-224": 10, "png-224": 5, "jpeg-640": 10, "png-640": 5, "jpeg-1600": 6, "png-1600": 4}
OVERLOAD_STATUSES = {429, 503, 507}
log = logging.getLogger("loadtests")

# The scenarios' own options: name -> (default, which sets the type too; help). Each also reads an
# environment variable, LOADTEST_<NAME> (e.g. LOADTEST_RAMP_STEP_TIME), and Locust's --config files.
OPTIONS = {
    "management-url": ("", "TorchServe's management API (default: the --host with its port + 1)"),
    "model": ("cifar10", "model name"),
    "key-file": ("key_file.json", "where `make serve` writes the keys; without it or --*-key, requests carry none"),
    "inference-key": ("", "inference key (default: the key file's)"),
    "management-key": ("", "management key (default: the key file's)"),
    "payloads": (str(DEFAULT_FOLDER), "payload folder built by `make payloads`"),
    "bad-share": (0.05, "share of requests that carry an invalid payload"),
    "multipart-share": (0.5, "share of requests that send the image as a multipart field `image`, not the raw body"),
    "user-rate": (1.0, "PacedUser: requests/s each user sends at most"),
    "p99-ms": (250.0, "service level: p99 bound of valid predictions in ms (set from a ramp: docs/load-testing.md)"),
    "operator-interval": (10.0, "seconds between two worker changes by the operator"),
    "operator-workers": (0, "workers the operator scales up to (default: the count it finds + 1)"),
    "operator-mode": ("up", "up: scale up once under load; up-down: alternate up and down (docs/load-testing.md)"),
    "summary": ("", "Markdown summary file (default: summary.md beside the --csv files)"),
    "ramp-start-users": (2, "ramp: users of the first step"),
    "ramp-step-users": (2, "ramp: users added at each step"),
    "ramp-step-time": (20.0, "ramp: seconds per step"),
    "ramp-max-users": (64, "ramp: users of the last step, if no step breaks before"),
    "spike-low-users": (4, "spike: users before and after the spike, the operator included"),
    "spike-high-users": (32, "spike: users during the spike, the operator included"),
    "spike-before": (20.0, "spike: seconds of low load before the spike"),
    "spike-duration": (20.0, "spike: seconds of the spike"),
    "spike-after": (30.0, "spike: seconds of low load after the spike, to recover"),
    "capacity": (0.0, "soak: requests/s the deployment sustains, from a benchmark (required)"),
    "load-fraction": (0.7, "soak: the share of --capacity it offers"),
    "duration": (600.0, "soak: seconds of load"),
    "warmup": (-1.0, "soak: seconds before the memory baseline (default: min(60, duration / 5))"),
    "sample-every": (10.0, "soak: seconds between memory samples"),
    "max-growth": (0.05, "soak: allowed memory growth of each process after the warm-up"),
    "ts-config": (str(REPO / "config.properties"), "soak: the server's config.properties (its addresses)"),
    "ts-workdir": (str(REPO), "soak: the server's working directory (its key_file.json)"),
    "data": ("", "soak: CIFAR-10 copy whose test images it sends (default: made-up images)"),
    "report-dir": (str(REPO / "reports"), "soak: folder of soak.json and soak.png"),
}


@events.init_command_line_parser.add_listener
def add_options(parser):
    for name, (default, text) in OPTIONS.items():
        parser.add_argument(
            f"--{name}",
            env_var="LOADTEST_" + name.upper().replace("-", "_"),
            type=type(default),
            default=default,
            help=text if "default:" in text else f"{text} (default: {default})",
            is_secret=name.endswith("-key"),
            choices=["up", "up-down"] if name == "operator-mode" else None,
        )
    add_noisy_option(parser, env_var="LOADTEST_NOISY")


class WrongAnswer(Exception):
    """An answer that breaks the API's contract, as opposed to one that shows overload."""


def group_of(request_name: str) -> str:
    return request_name.split(" ", 1)[0]


def management_url(options, inference_host: str) -> str:
    if options.management_url:
        return options.management_url.rstrip("/")
    parsed = urlparse(inference_host)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{parsed.hostname}:{port + 1}"


SHARED = SimpleNamespace()  # what every user of this process shares (payloads, keys, options), set up at init


@events.init.add_listener
def prepare(environment, **_kwargs):
    options = environment.parsed_options
    if options is None:  # Locust used as a library: the caller fills SHARED
        return
    payloads = load(Path(options.payloads))
    keys = read_keys(Path(options.key_file))
    headers = {}
    for api in ("inference", "management"):
        key = getattr(options, f"{api}_key") or keys.get(api, "")
        headers[api] = {"Authorization": f"Bearer {key}"} if key else {}
        if not key:
            log.warning("no %s key (key file %s): sending requests without it", api, options.key_file)
    vars(SHARED).update(options=options, payloads=payloads, bad=bad_payloads(payloads), headers=headers)


def error_problem(answer) -> str | None:
    """Why a 400 answer is not the JSON error the API promises (None when it is)."""
    message = answer.get("message") if isinstance(answer, dict) else None
    if message and isinstance(message, str) and answer.get("code") == 400:
        return None
    return f"400 without the JSON error body: {str(answer)[:200]}"


def judge(response, expected_status: int, body_problem):
    """Marks a catch_response request a success (returns its JSON answer), a wrong answer or an overload."""
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


def scale_problem(answer) -> str | None:
    return None if isinstance(answer, dict) and "status" in answer else f"unexpected scale answer: {answer}"


class ClassifierUser(FastHttpUser):
    """A client that keeps one request in flight: the traffic mix, raw and multipart, some bad payloads."""

    host = "http://127.0.0.1:8080"  # `make serve`; --host (LOCUST_HOST) for any other deployment
    network_timeout = 60.0

    def on_start(self):
        self.random = random.Random()

    @task
    def classify(self):
        transport = "multipart" if self.random.random() < SHARED.options.multipart_share else "raw"
        if self.random.random() < SHARED.options.bad_share:
            what = self.random.choice(list(SHARED.bad))
            body, content_type = SHARED.bad[what]
            name, expected_status, body_problem = f"bad {what} {transport}", 400, error_problem
        else:
            kind = self.random.choices(list(SHARED.payloads), weights=[MIX[kind] for kind in SHARED.payloads])[0]
            body = self.random.choice(SHARED.payloads[kind])
            content_type = CONTENT_TYPES[kind.split("-")[0]]
            name, expected_status, body_problem = f"predict {kind} {transport}", 200, answer_problem
        if transport == "multipart":
            body, content_type = encode_multipart_formdata({"image": ("image", body, content_type)})
        headers = {"Content-Type": content_type, **SHARED.headers["inference"]}
        path = f"/predictions/{SHARED.options.model}"
        with self.client.post(path, data=body, headers=headers, name=name, catch_response=True) as response:
            judge(response, expected_status, body_problem)


class PacedUser(ClassifierUser):
    """At most --user-rate requests/s each, whatever the answers' speed (until each has one request
    waiting): the soak's users, and the fleet drill's overload (-f ...,fleet/record.py PacedUser)."""

    def wait_time(self):
        return constant_throughput(SHARED.options.user_rate)(self)

    def on_start(self):
        super().on_start()
        # Out of phase: started together, they would send all at once every period (bursts over the job queue).
        gevent.sleep(self.random.uniform(0, 1 / SHARED.options.user_rate))


class OperatorUser(FastHttpUser):
    """One operator who scales the model's workers up under load (and back down, with --operator-mode up-down)
    and checks the model's description every interval; test_stop puts back the worker count it found."""

    fixed_count = 1
    host = ClassifierUser.host
    network_timeout = 120.0  # a synchronous scale-up waits for the new worker to load the model
    found_workers: int | None = None  # before the first change; restored at the end of the run
    restore_error: str | None = None
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
        url = f"{self.url}?min_worker={target}&max_worker={target}&synchronous=true"
        headers = SHARED.headers["management"]
        with self.client.put(url, headers=headers, name=f"manage scale to {target}", catch_response=True) as response:
            judge(response, 200, scale_problem)
        self.workers = target
        self.describe_model(expected_workers=target)

    def describe_model(self, expected_workers: int | None) -> dict | None:
        def description_problem(answer):
            model = answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], dict) else {}
            if model.get("modelName") != SHARED.options.model or not isinstance(model.get("workers"), list):
                return f"unexpected description: {str(answer)[:200]}"
            ready = sum(worker.get("status") == "READY" for worker in model["workers"])
            if expected_workers is not None and ready != expected_workers:
                return f"{ready} READY workers after scaling to {expected_workers}: {model['workers']}"
            return None

        headers = SHARED.headers["management"]
        with self.client.get(self.url, headers=headers, name="manage describe", catch_response=True) as response:
            answer = judge(response, 200, description_problem)
        return answer[0] if answer else None


@events.test_stop.add_listener
def restore_workers(environment, **_kwargs):
    """Puts the worker count back as the operator found it (its last change may have been cut short)."""
    workers = OperatorUser.found_workers
    if workers is None:
        return
    params = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
    try:
        response = requests.put(OperatorUser.url, params=params, headers=SHARED.headers["management"], timeout=120)
        if response.status_code != 200:
            OperatorUser.restore_error = f"HTTP {response.status_code}: {response.text[:200]}"
    except requests.RequestException as exception:
        OperatorUser.restore_error = str(exception)
    if OperatorUser.restore_error:
        log.error("could not restore %d workers: %s", workers, OperatorUser.restore_error)
    else:
        log.info("workers restored to %d", workers)
