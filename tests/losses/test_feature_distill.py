import pytest
import torch
import torch.nn.functional as F

from facerep.losses.feature_distill import feature_distill_loss, token_regression_loss


def test_hand_computed_token_and_feature_axes():
    s = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # [N=1, T=2, D=2]
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # token axis (dim 1): columns normalised: s -> [[1,0],[0,1]], t -> [[1/√2, 0],[1/√2, 0]] (col 1 is zero)
    r = 2**-0.5
    token = ((1 - r) ** 2 + r**2 + 0 + 1) / 4
    # feature axis (dim 2): rows normalised: s -> [[1,0],[0,1]], t -> [[1,0],[1,0]]
    feature = (0 + 0 + 1 + 1) / 4
    assert feature_distill_loss([s], [t], "token").item() == pytest.approx(token, rel=1e-6)
    assert feature_distill_loss([s], [t], "feature").item() == pytest.approx(feature, rel=1e-6)


def test_sums_blocks_and_detaches_target():
    torch.manual_seed(0)
    s = [torch.randn(2, 5, 4, requires_grad=True) for _ in range(3)]
    t = [torch.randn(2, 5, 4, requires_grad=True) for _ in range(3)]
    loss = feature_distill_loss(s, t)
    ref = sum(F.mse_loss(F.normalize(a, dim=1), F.normalize(b, dim=1)) for a, b in zip(s, t, strict=True))
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert all(x.grad is not None for x in s) and all(x.grad is None for x in t)
    assert feature_distill_loss(s, s).item() == 0.0


def test_argument_checks():
    x = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="norm_axis"):
        feature_distill_loss([x], [x], "channel")
    with pytest.raises(ValueError, match="same non-zero number"):
        feature_distill_loss([x], [])
    with pytest.raises(ValueError, match="shapes differ"):
        feature_distill_loss([x], [torch.randn(1, 3, 3)])


def test_token_regression_hand_computed_and_averaged_over_blocks():
    t = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # layer-normalised per token: [-1, 1] and [0, 0]
    p = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], requires_grad=True)
    one = ((0 + 1) ** 2 + 0 + 1 + 0) / 4  # (p - [-1, 1]) = [1, 0]; (p - [0, 0]) = [1, 0]
    assert token_regression_loss([p], [t]).item() == pytest.approx(one, rel=1e-5)
    two = token_regression_loss([p, torch.zeros(1, 2, 2)], [t, t])  # zeros against [-1, 1], [0, 0]: 0.5
    assert two.item() == pytest.approx((one + 0.5) / 2, rel=1e-5)
    t.requires_grad_(True)
    token_regression_loss([p], [t]).backward()
    assert p.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="same non-zero number"):
        token_regression_loss([p], [])
    with pytest.raises(ValueError, match="token shapes differ"):
        token_regression_loss([p], [torch.randn(1, 3, 2)])
