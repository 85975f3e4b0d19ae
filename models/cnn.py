"""Image classifiers for 28x28 grayscale images (Fashion-MNIST).

The full model is a small ResNet; the student is the same family with fewer, narrower
stages. Both take raw pixel values (0-255, float32) and normalise inside the graph, so the
exported ONNX file needs no preprocessing beyond reshaping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Fashion-MNIST training-set pixel statistics, on the 0-1 scale.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


@dataclass(frozen=True)
class CNNConfig:
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage; each later stage halves H and W
    blocks_per_stage: int = 2  # residual blocks per stage; depth is where the milliseconds go
    stem_stride: int = 1  # 2 halves the feature maps before the first stage (4x fewer FLOPs)
    dropout: float = 0.1  # before the classifier; Fashion-MNIST overfits past ~10 epochs without it


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ImageClassifier(nn.Module):
    """IMAGES [N, 1, 28, 28] float32 in 0-255 -> LOGITS [N, num_classes]."""

    def __init__(self, config: CNNConfig):
        super().__init__()
        assert config.widths, "CNNConfig.widths needs at least one stage"
        self.config = config
        first = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(1, first, 3, config.stem_stride, 1, bias=False), nn.BatchNorm2d(first), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_channels = first
        for stage, width in enumerate(config.widths):
            for block in range(config.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(ResidualBlock(in_channels, width, stride))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(in_channels, config.num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images / 255.0 - PIXEL_MEAN) / PIXEL_STD
        x = self.blocks(self.stem(x))  # [N, C, 28 / (stem_stride * 2^(stages-1)), same]
        x = x.mean(dim=(2, 3), keepdim=True)  # global average pool -> [N, C, 1, 1]
        return self.head(x)
