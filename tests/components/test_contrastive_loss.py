import math

import torch

from components.losses.contrastive import clip_loss


def test_clip_loss_matches_a_hand_computed_value():
    # Two pairs; image 0 matches text 0 exactly, image 1 is orthogonal to text 0.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * image @ text.T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert math.isclose(clip_loss(image, text, scale).item(), expected, rel_tol=1e-6)


def test_clip_loss_is_symmetric_and_falls_as_pairs_align():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    scale = torch.tensor(10.0)
    assert torch.isclose(clip_loss(a, b, scale), clip_loss(b, a, scale))
    assert clip_loss(a, a, scale) < clip_loss(a, b, scale)
