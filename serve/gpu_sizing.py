"""The GPU model config sized for the machine it is archived on: workers from its CPU cores and
GPU memory, a job queue for them (`python -m serve archive --device gpu`, `make archive DEVICE=gpu`).

On a GPU the model is not the bottleneck (one forward pass of a full batch takes well under a
millisecond); each worker's CPU work is: TorchServe's protocol, the decoding of files the GPU does
not decode, the JSON answers. So: one worker per core, less a quarter of the cores left to the
Java frontend (its netty threads parse HTTP), bounded by the GPU memory each worker's CUDA context
and allocator hold. The queue holds two full batches per worker (at least 1,024 requests, at most
4,096): beyond that TorchServe answers 503 at once, rather than letting a request wait seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from serve.errors import NoGpu

# GPU memory per worker: its CUDA context, the frozen model and the allocator's cache for batches
# of 128 (a worker was seen holding 760 MiB: see docs/gpu.md), with headroom.
WORKER_GPU_MIB = 1024
GPU_MEMORY_SHARE = 0.8  # of the GPU's free memory; the rest for other processes and fragmentation
MIN_QUEUE, MAX_QUEUE = 1024, 4096


@dataclass(frozen=True)
class Machine:
    cpus: int
    gpus: int
    gpu_free_mib: int  # free memory of the smallest GPU
    gpu_name: str


def this_machine() -> Machine:
    import torch  # 2 s to import: only when sizing

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise NoGpu("--device gpu: torch sees no CUDA device on this machine; archive with the CPU config instead")
    free = min(torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count()))
    return Machine(cpus, torch.cuda.device_count(), free // 2**20, torch.cuda.get_device_name(0))


def sized_config(template: dict, machine: Machine | None, workers: int | None = None) -> dict:
    """`template` (handler/model-config.gpu.yaml) with minWorkers, maxWorkers and jobQueueSize set
    for `machine`; `workers` overrides the chosen count (then `machine` may be None). TorchServe
    spreads workers over the GPUs."""
    if workers is None:
        by_cpu = machine.cpus - machine.cpus // 4
        by_memory = int(machine.gpu_free_mib * GPU_MEMORY_SHARE) // WORKER_GPU_MIB * machine.gpus
        workers = max(1, min(by_cpu, by_memory))
    queue = min(MAX_QUEUE, max(MIN_QUEUE, 2 * workers * int(template.get("batchSize", 1))))
    return {**template, "minWorkers": workers, "maxWorkers": workers, "jobQueueSize": queue}
