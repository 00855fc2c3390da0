import torch

from model import CLASSES, SimpleCNN


def test_parameter_count_is_the_flask_services():
    assert sum(p.numel() for p in SimpleCNN().parameters()) == 620_810


def test_layers_are_the_flask_services():
    model = SimpleCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (1, 1)),
    ]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 3
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(128 * 4 * 4, 256), (256, 10)]
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]


def test_output_shape_for_uint8_and_float_pixels():
    model = SimpleCNN().eval()
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert model(pixels).shape == (4, 10)
    torch.testing.assert_close(model(pixels), model(pixels.float()))


def test_normalization_is_cifar10_mean_and_std():
    normalize = SimpleCNN().normalize
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(normalize(pixels), (pixels / 255.0 - mean) / std)


def test_classes_in_cifar10_label_order():
    assert CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
