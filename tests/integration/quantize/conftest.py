"""Real models and real data for the quantization tests, all from installed packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# ImageNet classes (torchvision's category order) that the photos must land in.
CAT_CLASSES = {281, 282, 283, 284, 285, 287}  # tabby … Egyptian cat, lynx
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug
_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "colorwheel",
    "cat",
)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """The colour photographs that ship with scikit-image, as PNG files."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in _PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        image = loader()
        if image.ndim != 3:
            continue
        paths[name] = root / f"{name}.png"
        Image.fromarray(image[:, :, :3]).save(paths[name])
    return paths


@pytest.fixture(scope="session")
def calibration_folder(photos, tmp_path_factory) -> Path:
    """Seeded random crops and flips of the photographs: 48 calibration images."""
    from PIL import Image, ImageOps

    root = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(7)
    sources = [Image.open(p).convert("RGB") for p in photos.values()]
    for i in range(48):
        image = sources[i % len(sources)]
        w, h = image.size
        side = int(min(w, h) * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = image.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop.save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> dict[str, Path]:
    """A small ResNet-style classifier trained here on scikit-learn's handwritten digits.

    Returns the ONNX file and .npz calibration and validation splits (x: N×1×8×8, y: labels).
    """
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    torch.manual_seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    train, cal, val = slice(0, 1200), slice(1200, 1500), slice(1500, None)

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )

        def forward(self, t):
            return torch.relu(t + self.body(t))

    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        Block(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    model.train()
    for _ in range(25):
        for i in range(0, len(xt), 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[i : i + 64]), yt[i : i + 64])
            loss.backward()
            optimizer.step()
    model.eval()
    root = tmp_path_factory.mktemp("digits")
    onnx_path = root / "digits.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(x[:1]),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamo=False,
        opset_version=17,
    )
    np.savez(root / "calibration.npz", x=x[cal], y=y[cal])
    np.savez(root / "validation.npz", x=x[val], y=y[val])
    return {"model": onnx_path, "calibration": root / "calibration.npz", "validation": root / "validation.npz"}
