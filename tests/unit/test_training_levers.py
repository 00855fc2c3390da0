"""The training levers: weight decay on weights only, the weight average, the
training-time dropout rate, flip-only epochs, the recipe that uses them, and the whole-batch
augmentation (crops and mirror images)."""

import torch

from model import SimpleCNN
from train.config import parse_args
from train.data import random_crop_flip
from train.optim import WeightAverage, make_optimizer, parameter_groups, set_dropout


def test_weight_decay_reaches_the_weights_only():
    model = SimpleCNN()
    decayed, undecayed = parameter_groups(model, 5e-4)
    names = {id(p): name for name, p in model.named_parameters()}
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decayed["params"]) == [
        "classifier.1.weight",
        "classifier.4.weight",
        "features.0.0.weight",
        "features.1.0.weight",
        "features.2.0.weight",
    ]
    assert all(p.ndim == 1 for p in undecayed["params"])  # BatchNorm scales and shifts, biases
    assert len(decayed["params"]) + len(undecayed["params"]) == len(list(model.parameters()))


def test_the_nesterov_recipe_builds_nesterov_sgd_with_two_groups():
    cfg = parse_args(["--recipe", "nesterov"])
    assert (cfg.optimizer, cfg.dropout, cfg.flip_only_epochs, cfg.ema_decay) == ("sgd", 0.1, 2, 0.0)
    optimizer, scheduler = make_optimizer(cfg, SimpleCNN(), steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [5e-4, 0.0]
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)


def test_weight_average_follows_the_weights_and_batchnorm_statistics():
    model = SimpleCNN()
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(1.0)
    before = {name: t.clone() for name, t in average.average.state_dict().items()}
    average.update()  # first step: decay min(0.9, 2/11)
    weight = 1 - 2 / 11
    for name, value in average.average.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, before[name] + weight, msg=name)
    assert not any(p.requires_grad for p in average.average.parameters())


def test_training_dropout_rate_leaves_the_network_unchanged():
    model = SimpleCNN()
    keys = list(model.state_dict())
    set_dropout(model, 0.1)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.1]
    assert list(model.state_dict()) == keys and sum(p.numel() for p in model.parameters()) == 620_810


def test_flip_only_epochs_show_whole_images():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = random_crop_flip(padded, 2, True, generator, crop=False)
        for n in range(2):
            assert torch.equal(out[n], images[n]) or torch.equal(out[n], images[n].flip(2))


def test_augmentation_crops_and_mirrors_whole_batches():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    generator = torch.Generator().manual_seed(0)
    crops = [random_crop_flip(padded, 2, True, generator) for _ in range(50)]
    assert all(c.shape == images.shape for c in crops)
    # each crop is a window of the padded image, possibly mirrored
    windows = {(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)}
    seen = set()
    for crop in crops:
        for n in range(2):
            match = [
                (dy, dx, f)
                for dy, dx, f in windows
                if torch.equal(crop[n], (lambda w: w.flip(2) if f else w)(padded[n, :, dy : dy + 8, dx : dx + 8]))
            ]
            assert match, "crop is not a window of the padded image"
            seen.update(match)
    assert any(f for _, _, f in seen) and any(not f for _, _, f in seen)
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10
