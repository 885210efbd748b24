"""2-D sine positions of a feature map with padding (DETR, Carion et al., 2020, after "Attention is all you need").

Data contract: ``mask`` (B, h, w) bool, True at padded cells of the feature
map (the image's padding, downsampled); the result is (B, 2·F, h, w) with F =
``num_pos_feats`` (d_model / 2 in DETR), the y half first, then the x half.

A cell's coordinates count the real cells from the image's top-left corner
(1 at the first), so a padded image's real cells get the same positions as
the image alone would; with ``normalize`` they are divided by the real extent
(the count at the last cell of the row or column) and scaled to (0, 2π], so
positions describe a place relative to the image, whatever its size. Each
coordinate c becomes F features: sin(c / T^(2i/F)) at even index 2i and
cos(c / T^(2i/F)) at odd index 2i + 1, T the ``temperature``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine positions: mask (B, h, w), True = padding → (B, 2·num_pos_feats, h, w), in float32."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats {num_pos_feats} is odd: sines and cosines come in pairs")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        real = (~mask).float()  # (B, h, w), 1 at real cells
        y = real.cumsum(1)  # (B, h, w): real rows up to and including this one
        x = real.cumsum(2)  # (B, h, w): real columns up to and including this one
        if self.normalize:
            y = y / (y[:, -1:, :] + self.eps) * self.scale
            x = x / (x[:, :, -1:] + self.eps) * self.scale
        index = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_pos_feats)  # (F,)
        pos_x = x[..., None] / dim_t  # (B, h, w, F)
        pos_y = y[..., None] / dim_t
        # interleave: sin at even features, cos at odd ones
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, h, w)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature:g}, normalize={self.normalize}"


def build_position_encoding(d_model: int) -> PositionEmbeddingSine:
    """DETR's positions: d_model / 2 features per axis, normalised to the real extent."""
    if d_model % 4:
        raise ValueError(f"d_model {d_model} is not a multiple of 4: each axis needs d_model/2 sine-cosine pairs")
    return PositionEmbeddingSine(d_model // 2, normalize=True)
