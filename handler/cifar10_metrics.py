"""The CIFAR-10 handler's own metrics, recorded through TorchServe's metrics API.

Each value becomes one `[METRICS]` line on the worker's stdout, which the frontend adds to its
Prometheus registry if deploy/torchserve/metrics.yaml declares the metric (its `model_metrics`).
Counts are aggregated per batch, so a batch costs one line per predicted class, per rejection
reason and per confidence bucket reached, plus three: batch size, decode time, inference time. At
start a worker counts itself and sets the reference class mix; a GPU worker also reports the GPU
memory it holds (at start, then every GPU_MEMORY_EVERY batches). No metric has a per-process
label: a restarted or added worker adds to the same series.
"""

import functools
import time
from collections import Counter

import numpy as np
from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

# The served predictions' top-1 probability, as a Prometheus histogram's cumulative buckets: each
# bucket `le` counts the predictions whose confidence is at most `le`. 0.5 is the low-confidence
# alert's threshold, 0.9 parts the confident answers from the hesitant ones, 0.3 is near a guess
# (chance is 0.1). A counter with an `le` label, not a TorchServe HISTOGRAM: that one takes one
# observation (one log line) per prediction, in fixed buckets (0.005 .. 10 s, made for times).
CONFIDENCE_BUCKETS = (0.3, 0.5, 0.7, 0.9)

# name -> (type, unit, label names after model_name and model_version), as in deploy/torchserve/metrics.yaml
METRICS = {
    "cifar10_predictions_total": (MetricTypes.COUNTER, "count", ["class"]),
    "cifar10_rejected_total": (MetricTypes.COUNTER, "count", ["reason"]),
    "cifar10_prediction_confidence_bucket": (MetricTypes.COUNTER, "count", ["le"]),
    "cifar10_batch_size": (MetricTypes.HISTOGRAM, "requests", []),
    "cifar10_decode_seconds": (MetricTypes.HISTOGRAM, "s", []),
    "cifar10_inference_seconds": (MetricTypes.HISTOGRAM, "s", []),
    "cifar10_worker_starts_total": (MetricTypes.COUNTER, "count", []),
    "cifar10_reference_class_share": (MetricTypes.GAUGE, "ratio", ["class"]),
    "cifar10_reference_low_confidence_share": (MetricTypes.GAUGE, "ratio", []),
    "cifar10_gpu_memory_bytes": (MetricTypes.GAUGE, "bytes", []),
}


class BatchMetrics:
    def __init__(self, context, classes: list[str]):
        self.classes = classes
        self.labels = [context.model_name, context.manifest["model"]["modelVersion"]]
        self.metrics = {name: _metric(context.metrics, name, *spec) for name, spec in METRICS.items()}

    def worker_started(self, run_metadata: dict) -> None:
        """A worker process starts: one more start, and what its model did on the test split (the
        training run's metadata.json): the class mix it predicted, and the share of its predictions
        at most 0.5 confident (runs exported before that was recorded have none)."""
        self.metrics["cifar10_worker_starts_total"].add_or_update(1, self.labels)
        for name, share in zip(self.classes, reference_class_share(run_metadata["confusion_matrix"])):
            self.metrics["cifar10_reference_class_share"].add_or_update(share, [*self.labels, name])
        if "low_confidence_share" in run_metadata:
            share = run_metadata["low_confidence_share"]
            self.metrics["cifar10_reference_low_confidence_share"].add_or_update(share, self.labels)

    def count(self, errors: list, probabilities) -> None:
        """One batch's outcome: `errors` has an InvalidImage or None per request, `probabilities` the
        class probabilities (rows x classes) of the requests that got a prediction."""
        self.metrics["cifar10_batch_size"].add_or_update(len(errors), self.labels)
        if len(probabilities):
            for index, count in Counter(probabilities.argmax(1).tolist()).items():
                self.metrics["cifar10_predictions_total"].add_or_update(count, [*self.labels, self.classes[index]])
            confidence = probabilities.max(1)
            for bound in CONFIDENCE_BUCKETS:
                if count := int(np.count_nonzero(confidence <= bound)):
                    self.metrics["cifar10_prediction_confidence_bucket"].add_or_update(
                        count, [*self.labels, str(bound)]
                    )
            self.metrics["cifar10_prediction_confidence_bucket"].add_or_update(len(confidence), [*self.labels, "+Inf"])
        for reason, count in Counter(error.reason for error in errors if error is not None).items():
            self.metrics["cifar10_rejected_total"].add_or_update(count, [*self.labels, reason])

    def gpu_memory(self, reserved_bytes: int) -> None:
        self.metrics["cifar10_gpu_memory_bytes"].add_or_update(reserved_bytes, self.labels)

    def observe_seconds(self, name: str, seconds: float) -> None:
        self.metrics[name].add_or_update(seconds, self.labels)


def reference_class_share(confusion_matrix: list[list[int]]) -> list[float]:
    """The share of each predicted class on the test split: the columns of the run's confusion
    matrix (rows: true class, columns: predicted class, in the classes' order)."""
    predicted = np.asarray(confusion_matrix, dtype=np.float64).sum(axis=0)
    return (predicted / predicted.sum()).tolist()


def timed(metric: str):
    """Decorates a handler step (called once per batch) to record its duration in `metric`."""

    def decorate(step):
        @functools.wraps(step)
        def run(handler, *args, **kwargs):
            started = time.perf_counter()
            result = step(handler, *args, **kwargs)
            handler.batch_metrics.observe_seconds(metric, time.perf_counter() - started)
            return result

        return run

    return decorate


def _metric(cache, name: str, kind: MetricTypes, unit: str, labels: list[str]):
    try:
        return cache.get_metric(name, kind)
    except MetricsCacheKeyError:  # TorchServe runs with another metrics_config: emitted, not shown on /metrics
        return cache.add_metric_to_cache(name, unit, ["model_name", "model_version", *labels], kind)
