"""Train the SimpleCNN on CIFAR-10 and export it for TorchServe.

    python -m train                                          # the baseline recipe (the Flask service's), torchvision's download
    python -m train --data ../shared/data/cifar10-jpeg.tar.gz
    torchrun --nproc_per_node 2 -m train --data ...          # DDP: gloo on CPU, nccl on GPUs

The data set lives in memory as uint8 tensors (on the GPU when there is one); each epoch is
augmented in one vectorized step (random crop with padding, horizontal flip), then cut into
batches. A validation split held out of the training images is evaluated after each epoch, and the
epoch with the best validation accuracy is the one exported (the final epoch, with --val-size 0);
the test split is evaluated once, on the exported model (train.export). Writes models/<run>/ and
points models/latest at it.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from model import SimpleCNN
from train.config import Config, parse_args
from train.cuda_graph import GraphedTrainStep, graph_supported
from train.data import VALIDATION_DRAWN, VALIDATION_SEED, load_cifar10, random_crop_flip, subset, validation_split
from train.device import training_device
from train.errors import ConfigError, TrainError
from train.evaluate import evaluate
from train.export import write_run
from train.optim import WeightAverage, make_optimizer, set_dropout
from train.step import training_step


def train(cfg: Config) -> dict:
    """Runs the whole job; returns the run's record written (rank 0) or None (other ranks)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = training_device(cfg.device)
    not_graphed = graph_supported(device, cfg.optimizer, world_size, cfg.compile)
    if cfg.cuda_graph == "on" and not_graphed:
        raise ConfigError(f"--cuda-graph on: {not_graphed}")
    graph = cfg.cuda_graph != "off" and not_graphed is None
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = True  # same seed, same GPU: same weights
        torch.backends.cudnn.benchmark = False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.time()

    data = load_cifar10(cfg.data or os.environ.get("CIFAR10_DATA") or None)
    train_images, train_labels = subset(data.train_images, data.train_labels, cfg.train_subset)
    kept, held_out = validation_split(train_labels, cfg.validation_size(len(train_labels)), VALIDATION_SEED)
    val_images, val_labels = train_images[held_out].to(device), train_labels[held_out]  # evaluated each epoch
    train_images, train_labels = train_images[kept], train_labels[kept]
    validating = len(val_labels) > 0
    test_images, test_labels = subset(data.test_images, data.test_labels, cfg.test_subset)  # once, after training
    pad = cfg.crop_padding
    padded = F.pad(train_images, (pad, pad, pad, pad)).to(device)  # zero (black) padding, as RandomCrop
    train_labels = train_labels.to(device)

    model = SimpleCNN().to(device, memory_format=torch.channels_last)
    set_dropout(model, cfg.dropout)
    step_model = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    if cfg.compile:
        step_model = torch.compile(step_model)
    per_rank = len(train_images) // world_size
    steps_per_epoch = -(-per_rank // cfg.batch_size)
    if per_rank % cfg.batch_size == 1:  # BatchNorm cannot train on a batch of one
        steps_per_epoch -= 1
    optimizer, scheduler = make_optimizer(cfg, model, steps_per_epoch, cycle_momentum=not graph)
    averaged = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    served = averaged.average if averaged else model  # what is evaluated and exported
    generator = torch.Generator().manual_seed(cfg.seed)  # same stream on every rank
    use_amp = cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda")
    graphed = GraphedTrainStep(model, optimizer, cfg.batch_size, use_amp, cfg.label_smoothing) if graph else None

    history, selected = [], None
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.time()
        model.train()
        order = torch.randperm(len(train_images), generator=generator).to(device)
        crop = epoch <= cfg.epochs - cfg.flip_only_epochs
        images = random_crop_flip(padded[order], pad, cfg.flip, generator, crop=crop)
        labels = train_labels[order]
        images, labels = (
            images[rank : world_size * per_rank : world_size],
            labels[rank : world_size * per_rank : world_size],
        )
        images = images.contiguous(memory_format=torch.channels_last)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        if graphed is not None:
            graphed.start_epoch()
        bar = tqdm(  # on a terminal only: into a log file it would write thousands of frames; the epoch's line stays
            range(steps_per_epoch),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="step",
            disable=rank != 0 or not sys.stderr.isatty(),
            leave=False,
        )
        for step in bar:
            x = images[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            y = labels[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            seen += len(y)
            if graphed is not None:  # CUDA: one graph replay, no host synchronization
                graphed.run(x, y)
                if scheduler is not None:
                    scheduler.step()
                    graphed.follow_schedule()
                if averaged is not None:
                    averaged.update()
                continue
            loss, step_correct = training_step(step_model, optimizer, x, y, use_amp, cfg.label_smoothing)
            if scheduler is not None:
                scheduler.step()
            if averaged is not None:
                averaged.update()
            loss_sum += loss * len(y)
            correct += step_correct
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the steps run asynchronously: time them to their end
        train_seconds = time.time() - epoch_start
        epoch_loss, epoch_correct = graphed.sums() if graphed is not None else (loss_sum.item(), correct.item())
        record = {"epoch": epoch, "train_loss": epoch_loss / seen, "train_accuracy": epoch_correct / seen}
        if validating:
            validation = evaluate(served, val_images, val_labels, cfg.eval_batch_size, device)
            record |= {"validation_loss": validation["loss"], "validation_accuracy": validation["accuracy"]}
            if averaged is not None and epoch == cfg.epochs:  # what the average added, once, at the end
                live = evaluate(model, val_images, val_labels, cfg.eval_batch_size, device)
                record["live_validation_accuracy"] = live["accuracy"]
        record |= {
            "lr": float(optimizer.param_groups[0]["lr"]),
            "train_seconds": round(train_seconds, 2),
            "eval_seconds": round(time.time() - epoch_start - train_seconds, 2),
            "images_per_second": round(seen * world_size / train_seconds, 1),
        }
        history.append(record)
        if rank == 0:
            validated = f"validation {record['validation_accuracy']:.2%}  " if validating else ""
            tqdm.write(
                f"epoch {epoch:2d}  loss {record['train_loss']:.4f}  train {record['train_accuracy']:.2%}  "
                f"{validated}{train_seconds:.1f}s  {record['images_per_second']:.0f} img/s"
            )
        # The epoch exported: the best on the validation split; without one, the final epoch.
        if validating:
            better = selected is None or record["validation_accuracy"] > selected["validation_accuracy"]
        else:
            better = epoch == cfg.epochs
        if better:
            selected = {
                "epoch": epoch,
                "selected_on": "validation" if validating else "final_epoch",
                "validation_accuracy": record.get("validation_accuracy"),
                "state_dict": {name: value.detach().cpu().clone() for name, value in served.state_dict().items()},
            }

    record = None
    if rank == 0:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        record = write_run(
            cfg,
            selected=selected,
            history=history,
            data={
                "source": data.source,
                "sha256": data.sha256,
                "train_images": len(train_images),
                "validation": {"images": len(val_labels), "seed": VALIDATION_SEED, "drawn": VALIDATION_DRAWN},
                "test_images": len(test_images),
            },
            test_images=test_images,
            test_labels=test_labels,
            run_info={
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "world_size": world_size,
                "threads": torch.get_num_threads(),
                "cuda_graph": graph,
                "total_seconds": round(time.time() - started, 1),
                "peak_memory_mb": round(peak_mb, 1),
                "config": asdict(cfg),
            },
        )
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return record


def main(argv: list[str] | None = None) -> None:
    try:
        train(parse_args(argv))
    except TrainError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
