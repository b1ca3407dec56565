import math

import pytest
import torch
import torch.nn.functional as F

from facerep.losses.infonce import infonce_loss


def test_hand_computed_two_by_two():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # normalised: q = [1,0],[0,1]; k = [1,0],[1/sqrt2, 1/sqrt2]
    s = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t)))
    row1 = -math.log(math.exp(s / t) / (math.exp(0 / t) + math.exp(s / t)))
    expected = (row0 + row1) / 2 * 2 * t
    assert infonce_loss(q, k, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_matches_reference_formula_and_gradients_only_reach_queries():
    torch.manual_seed(0)
    q = torch.randn(8, 16, requires_grad=True)
    k = torch.randn(8, 16, requires_grad=True)
    loss = infonce_loss(q, k, 0.2)
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
    ref = F.cross_entropy(logits, torch.arange(8)) * 0.4
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_argument_checks():
    with pytest.raises(ValueError, match="temperature"):
        infonce_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        infonce_loss(torch.randn(2, 3), torch.randn(3, 3))
