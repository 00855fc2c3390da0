"""The GPU training path (train/cuda_graph.py, --device cuda): runs where a CUDA device exists,
skipped elsewhere. `make gpu-check` runs these on a GPU machine."""

import json

import pytest
import torch
from helpers import needs_gpu, train_run, weights_digest

from model import SimpleCNN
from train.config import Config
from train.cuda_graph import GraphedTrainStep
from train.main import make_optimizer

pytestmark = needs_gpu

SMALL = ("--train-subset", "3000", "--test-subset", "1000")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "auto"])
def test_train_runs_on_the_gpu_with_the_graphed_step(tmp_path, data_source, device):
    run = train_run(tmp_path, data_source, *SMALL, "--device", device)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["device"] != "cpu" and meta["cuda_graph"] is True
    assert meta["test_accuracy"] > 0.2


def test_same_seed_gives_identical_weights_on_the_gpu(tmp_path, data_source):
    first = train_run(tmp_path / "a", data_source, *SMALL, "--device", "cuda", "--seed", "5")
    second = train_run(tmp_path / "b", data_source, *SMALL, "--device", "cuda", "--seed", "5")
    assert weights_digest(first) == weights_digest(second)


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_graphed_step_follows_the_eager_steps_math(schedule):
    """Same start, same batches (including a short last one): the graph's weights are the eager ones."""
    torch.manual_seed(0)
    device = torch.device("cuda", 0)
    torch.backends.cudnn.deterministic = True
    images = torch.randint(0, 256, (10 * 64 + 16, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (len(images),), device=device)
    cfg = Config(schedule=schedule, lr=3e-3, epochs=1)
    start = SimpleCNN().to(device, memory_format=torch.channels_last).state_dict()
    results = []
    for graphed_run in (False, True):
        model = SimpleCNN().to(device, memory_format=torch.channels_last)
        model.load_state_dict(start)
        model.train()
        optimizer, scheduler = make_optimizer(cfg, model, 11, cycle_momentum=False)
        step = GraphedTrainStep(model, optimizer, 64, use_amp=False, label_smoothing=0.1)
        for index in range(11):
            x = images[index * 64 : (index + 1) * 64].contiguous(memory_format=torch.channels_last)
            y = labels[index * 64 : (index + 1) * 64]
            step.run(x, y) if graphed_run else step.step(x, y)
            if scheduler is not None:
                scheduler.step()
                step.follow_schedule()
        assert (step.graph is not None) == graphed_run
        results.append((model.state_dict(), step.sums()))
    (eager, eager_sums), (graphed, graphed_sums) = results
    for name in eager:
        torch.testing.assert_close(graphed[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)
    assert graphed_sums[1] == eager_sums[1]
    assert graphed_sums[0] == pytest.approx(eager_sums[0], rel=1e-4)
