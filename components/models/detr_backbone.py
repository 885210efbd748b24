"""DETR's convolutional backbones: images (B, 3, H, W) → one feature map (B, C, H/s, W/s).

Two kinds, each a list of stages (stem first) so that the early ones can be frozen:
- ``ResNetBackbone``: torchvision's ResNet-18/34/50/101 without the pooling
  and classifier (stride 32; 16 with ``dilation``, DETR's DC5, where the last
  stage dilates instead of striding). Its parameter names are torchvision's
  (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), which timm's ResNets share, so
  ImageNet weights of either load directly. With ``frozen_batch_norm`` (DETR's
  choice: batches of a few large images give poor statistics) every
  BatchNorm2d is torchvision's ``FrozenBatchNorm2d``: fixed statistics and
  affine terms, all buffers. Stages: stem (conv1, bn1), layer1 … layer4.
- ``TinyBackbone``: a small CNN that learns from scratch on a CPU: a stride-2
  stem and three stride-2 stages of two 3×3 conv–GroupNorm–ReLU layers each
  (stride 16; channels w, w, 2w, 4w for ``width`` w). GroupNorm trains and
  does not depend on the batch. Stages: stem, layer1 … layer3.

``freeze_stages(backbone, trainable)`` leaves the last ``trainable`` stages
trainable and stops the gradients of the others (torchvision's
``trainable_backbone_layers``: DETR trains layer2–4 of its ResNet, 3).
Input images are normalised by the caller (ImageNet mean and std for ResNets).
"""

from __future__ import annotations

import math

import torch
from torch import nn

RESNET_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


class ResNetBackbone(nn.Module):
    """torchvision's ResNet body under its own names: (B, 3, H, W) → (B, C, H/32, W/32) (H/16 with dilation)."""

    def __init__(self, name: str = "resnet50", frozen_batch_norm: bool = True, dilation: bool = False):
        super().__init__()
        import torchvision
        from torchvision.ops.misc import FrozenBatchNorm2d

        if name not in RESNET_CHANNELS:
            raise ValueError(f"unknown ResNet {name!r}; known: {', '.join(RESNET_CHANNELS)}")
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"{name} has basic blocks, which torchvision cannot dilate: dilation needs resnet50/101")
        net = getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, False, dilation],
                                                norm_layer=FrozenBatchNorm2d if frozen_batch_norm else nn.BatchNorm2d)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_channels = RESNET_CHANNELS[name]
        self.stride = 16 if dilation else 32

    def stages(self) -> list[list[nn.Module]]:
        """The modules of each stage, stem first."""
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (B, 64, H/4, W/4)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C, H/32, W/32)


def conv_norm_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution (no bias), GroupNorm of up to 8 groups, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(math.gcd(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """A stride-16 CNN with trainable GroupNorm: (B, 3, H, W) → (B, 4·width, H/16, W/16)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stem = conv_norm_relu(3, width, stride=2)  # /2
        self.layer1 = nn.Sequential(conv_norm_relu(width, width, 2), conv_norm_relu(width, width))  # /4
        self.layer2 = nn.Sequential(conv_norm_relu(width, 2 * width, 2), conv_norm_relu(2 * width, 2 * width))  # /8
        self.layer3 = nn.Sequential(conv_norm_relu(2 * width, 4 * width, 2),
                                    conv_norm_relu(4 * width, 4 * width))  # /16
        self.num_channels = 4 * width
        self.stride = 16
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[list[nn.Module]]:
        return [[self.stem], [self.layer1], [self.layer2], [self.layer3]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(images))))


def freeze_stages(backbone: ResNetBackbone | TinyBackbone, trainable: int) -> None:
    """Stop the gradients of all but the last ``trainable`` stages (0: all frozen; the stage count: none)."""
    stages = backbone.stages()
    if not 0 <= trainable <= len(stages):
        raise ValueError(f"trainable_backbone_layers {trainable} is not in [0, {len(stages)}] for this backbone")
    for i, modules in enumerate(stages):
        for module in modules:
            module.requires_grad_(i >= len(stages) - trainable)


def build_backbone(cfg) -> ResNetBackbone | TinyBackbone:
    """The backbone a ``DetrConfig`` names, its early stages frozen as ``cfg.trainable_backbone_layers`` says."""
    if cfg.backbone == "tiny":
        backbone = TinyBackbone(cfg.tiny_width)
    else:
        backbone = ResNetBackbone(cfg.backbone, cfg.frozen_batch_norm, cfg.dilation)
    freeze_stages(backbone, cfg.trainable_backbone_layers)
    return backbone
