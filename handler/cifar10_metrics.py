"""The CIFAR-10 handler's own metrics, recorded once per batch through TorchServe's metrics API.

Each value becomes one `[METRICS]` line on the worker's stdout, which the frontend adds to its
Prometheus registry if deploy/torchserve/metrics.yaml declares the metric (its `model_metrics`). Counts are
aggregated per batch, so a batch costs one line per predicted class and per rejection reason
present, plus three: batch size, decode time, inference time. A GPU worker also reports the GPU
memory it holds (at start, then every GPU_MEMORY_EVERY batches).
"""

import functools
import os
import time
from collections import Counter

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

# name -> (type, unit, label names after model_name and model_version), as in deploy/torchserve/metrics.yaml
METRICS = {
    "cifar10_predictions_total": (MetricTypes.COUNTER, "count", ["class"]),
    "cifar10_rejected_total": (MetricTypes.COUNTER, "count", ["reason"]),
    "cifar10_batch_size": (MetricTypes.HISTOGRAM, "requests", ["worker"]),
    "cifar10_decode_seconds": (MetricTypes.HISTOGRAM, "s", []),
    "cifar10_inference_seconds": (MetricTypes.HISTOGRAM, "s", []),
    "cifar10_gpu_memory_bytes": (MetricTypes.GAUGE, "bytes", ["worker"]),
}


class BatchMetrics:
    def __init__(self, context, classes: list[str]):
        self.classes = classes
        self.labels = [context.model_name, context.manifest["model"]["modelVersion"]]
        self.worker = str(os.getpid())
        self.metrics = {name: _metric(context.metrics, name, *spec) for name, spec in METRICS.items()}

    def count(self, errors: list, predicted: list[int]) -> None:
        """One batch's outcome: `errors` has an InvalidImage or None per request, `predicted` the
        class index of each request that got a prediction."""
        self.metrics["cifar10_batch_size"].add_or_update(len(errors), [*self.labels, self.worker])
        for index, count in Counter(predicted).items():
            self.metrics["cifar10_predictions_total"].add_or_update(count, [*self.labels, self.classes[index]])
        for reason, count in Counter(error.reason for error in errors if error is not None).items():
            self.metrics["cifar10_rejected_total"].add_or_update(count, [*self.labels, reason])

    def gpu_memory(self, reserved_bytes: int) -> None:
        self.metrics["cifar10_gpu_memory_bytes"].add_or_update(reserved_bytes, [*self.labels, self.worker])

    def observe_seconds(self, name: str, seconds: float) -> None:
        self.metrics[name].add_or_update(seconds, self.labels)


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
