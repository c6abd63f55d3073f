"""The torchvision classification families, built in code (no torchvision, no download).

Each family keeps the building blocks torchvision gives it -- the operators and graph
shapes the exporters and converters see -- at a small width and depth, so that the whole
corpus compiles in minutes: residual blocks, inverted residuals with ReLU6 or hard-swish
and squeeze-excitation, fire modules with ceil-mode pooling, channel shuffle with
``chunk``, grouped convolutions, LayerNorm + GELU with permutes, dense concatenation,
inception branches.  Weights are seeded and batch-norm statistics randomized.
"""

from __future__ import annotations

from pathlib import Path


def _nn():
    import torch
    from torch import nn

    return torch, nn


def _bn_act(nn, cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act=None):
    act = nn.ReLU(inplace=True) if act is None else act
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act)


def _squeeze_excite(nn, c: int, squeeze: int, gate):
    torch, _ = _nn()

    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Conv2d(c, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, c, 1)
            self.act = nn.ReLU() if gate is nn.Hardsigmoid else nn.SiLU()
            self.gate = gate()

        def forward(self, x):
            s = torch.nn.functional.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(self.act(self.fc1(s))))

    return SE()


def resnet():
    torch, nn = _nn()

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                _bn_act(nn, cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            )
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    return nn.Sequential(
        nn.Conv2d(3, 16, 7, 2, 3, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 100),
    )


def _inverted_residual(nn, cin: int, cout: int, stride: int, expand: int, act, se: bool = False, k: int = 3):
    hidden = cin * expand
    layers = [] if expand == 1 else [_bn_act(nn, cin, hidden, 1, act=act())]
    layers.append(_bn_act(nn, hidden, hidden, k, stride, groups=hidden, act=act()))
    if se:
        layers.append(_squeeze_excite(nn, hidden, max(8, hidden // 4), nn.Hardsigmoid))
    layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    return Block()


def mobilenet_v2():
    _, nn = _nn()
    return nn.Sequential(
        _bn_act(nn, 3, 16, 3, 2, act=nn.ReLU6()),
        _inverted_residual(nn, 16, 8, 1, 1, nn.ReLU6),
        _inverted_residual(nn, 8, 16, 2, 6, nn.ReLU6),
        _inverted_residual(nn, 16, 16, 1, 6, nn.ReLU6),
        _inverted_residual(nn, 16, 24, 2, 6, nn.ReLU6),
        _bn_act(nn, 24, 128, 1, act=nn.ReLU6()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, 100),
    )


def mobilenet_v3():
    _, nn = _nn()
    return nn.Sequential(
        _bn_act(nn, 3, 16, 3, 2, act=nn.Hardswish()),
        _inverted_residual(nn, 16, 16, 2, 1, nn.ReLU, se=True),
        _inverted_residual(nn, 16, 24, 2, 4, nn.ReLU),
        _inverted_residual(nn, 24, 24, 1, 3, nn.Hardswish, se=True, k=5),
        _bn_act(nn, 24, 96, 1, act=nn.Hardswish()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 128),
        nn.Hardswish(),
        nn.Dropout(0.2),
        nn.Linear(128, 100),
    )


def squeezenet():
    torch, nn = _nn()

    class Fire(nn.Module):
        def __init__(self, cin: int, squeeze: int, expand: int) -> None:
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
            self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
            self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

        def forward(self, x):
            s = self.squeeze(x)
            return torch.cat([self.e1(s), self.e3(s)], 1)

    # squeezenet1_1: ceil-mode max pooling, a final 1x1 conv classifier.
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 8, 16),
        Fire(32, 8, 16),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(32, 16, 32),
        nn.Dropout(0.5),
        nn.Conv2d(64, 100, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def shufflenet_v2():
    torch, nn = _nn()

    def shuffle(x, groups: int = 2):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)

    class Unit(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.stride = stride
            half = cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(
                    nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                    nn.BatchNorm2d(cin),
                    _bn_act(nn, cin, half, 1),
                )
            bin_ = cin if stride > 1 else half
            self.branch2 = nn.Sequential(
                _bn_act(nn, bin_, half, 1),
                nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
                nn.BatchNorm2d(half),
                _bn_act(nn, half, half, 1),
            )

        def forward(self, x):
            if self.stride == 1:
                a, b = x.chunk(2, dim=1)
                out = torch.cat((a, self.branch2(b)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return shuffle(out)

    return nn.Sequential(
        _bn_act(nn, 3, 16, 3, 2),
        nn.MaxPool2d(3, 2, 1),
        Unit(16, 32, 2),
        Unit(32, 32, 1),
        Unit(32, 64, 2),
        Unit(64, 64, 1),
        _bn_act(nn, 64, 128, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 100),
    )


def regnet_y():
    torch, nn = _nn()

    class YBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, group_width: int = 8) -> None:
            super().__init__()
            self.body = nn.Sequential(
                _bn_act(nn, cin, cout, 1),
                _bn_act(nn, cout, cout, 3, stride, groups=cout // group_width),
                _squeeze_excite(nn, cout, max(4, cin // 4), nn.Sigmoid),
                nn.Conv2d(cout, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.proj is None else self.proj(x)))

    return nn.Sequential(
        _bn_act(nn, 3, 16, 3, 2),
        YBlock(16, 24, 2),
        YBlock(24, 24, 1),
        YBlock(24, 48, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(48, 100),
    )


def efficientnet():
    _, nn = _nn()

    def mb(cin: int, cout: int, stride: int, expand: int, k: int):
        hidden = cin * expand
        layers = [] if expand == 1 else [_bn_act(nn, cin, hidden, 1, act=nn.SiLU())]
        layers += [
            _bn_act(nn, hidden, hidden, k, stride, groups=hidden, act=nn.SiLU()),
            _squeeze_excite(nn, hidden, max(4, cin // 4), nn.Sigmoid),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(*layers)
                self.residual = stride == 1 and cin == cout

            def forward(self, x):
                return x + self.body(x) if self.residual else self.body(x)

        return Block()

    return nn.Sequential(
        _bn_act(nn, 3, 16, 3, 2, act=nn.SiLU()),
        mb(16, 8, 1, 1, 3),
        mb(8, 16, 2, 6, 3),
        mb(16, 16, 1, 6, 5),
        mb(16, 24, 2, 6, 5),
        _bn_act(nn, 24, 128, 1, act=nn.SiLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128, 100),
    )


def convnext():
    torch, nn = _nn()

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class CNBlock(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.fc1 = nn.Linear(dim, 4 * dim)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(4 * dim, dim)
            self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) * 0.5 + 0.1)

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(self.act(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
            return x + self.layer_scale * y

    return nn.Sequential(
        nn.Conv2d(3, 24, 4, 4),
        LayerNorm2d(24, eps=1e-6),
        CNBlock(24),
        LayerNorm2d(24, eps=1e-6),
        nn.Conv2d(24, 48, 2, 2),
        CNBlock(48),
        nn.AdaptiveAvgPool2d(1),
        LayerNorm2d(48, eps=1e-6),
        nn.Flatten(1),
        nn.Linear(48, 100),
    )


def densenet():
    torch, nn = _nn()

    class Dense(nn.Module):
        def __init__(self, cin: int, growth: int = 8) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin),
                nn.ReLU(),
                nn.Conv2d(cin, 4 * growth, 1, bias=False),
                nn.BatchNorm2d(4 * growth),
                nn.ReLU(),
                nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            )

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    def transition(cin: int, cout: int):
        return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2))

    return nn.Sequential(
        nn.Conv2d(3, 16, 7, 2, 3, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        Dense(16),
        Dense(24),
        transition(32, 16),
        Dense(16),
        Dense(24),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 100),
    )


def googlenet():
    torch, nn = _nn()

    class Inception(nn.Module):
        def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
            super().__init__()
            self.b1 = _bn_act(nn, cin, c1, 1)
            self.b2 = nn.Sequential(_bn_act(nn, cin, c3r, 1), _bn_act(nn, c3r, c3, 3))
            # torchvision's "5x5" branch is a 3x3 conv (a known quirk it keeps).
            self.b3 = nn.Sequential(_bn_act(nn, cin, c5r, 1), _bn_act(nn, c5r, c5, 3))
            self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _bn_act(nn, cin, pool, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    return nn.Sequential(
        _bn_act(nn, 3, 16, 7, 2),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        _bn_act(nn, 16, 32, 3),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Inception(32, 8, 8, 16, 4, 4, 4),
        Inception(32, 16, 8, 16, 4, 8, 8),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Inception(48, 16, 8, 16, 4, 8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(48, 100),
    )


FAMILIES = {
    "resnet": resnet,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3,
    "squeezenet": squeezenet,
    "shufflenet_v2": shufflenet_v2,
    "regnet_y": regnet_y,
    "efficientnet": efficientnet,
    "convnext": convnext,
    "densenet": densenet,
    "googlenet": googlenet,
}


def export(family: str, out_dir: Path, size: int = 64, seed: int = 0) -> Path:
    """The family's model as ONNX (opset 17, TorchScript exporter), seeded, in eval mode."""
    import torch

    from tests.frameworks.models import randomize_torch_batchnorm

    torch.manual_seed(seed)
    model = FAMILIES[family]().eval()
    randomize_torch_batchnorm(model, seed)
    path = out_dir / f"torch_{family}.onnx"
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"]
    )
    return path
