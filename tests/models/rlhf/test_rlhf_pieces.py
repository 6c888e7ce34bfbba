import math

import pytest
import torch

from portkit.models.rlhf.ppo import KLController, gae, kl_penalty, policy_loss, rule_accuracy, value_loss, whiten
from portkit.models.rlhf.reward import accuracy, ranking_loss
from portkit.models.rlhf.sft import lr_at


def test_gae_matches_a_hand_computed_example():
    # one row, three valid tokens then padding; gamma 0.9, lambda 0.5
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.2, 0.4, 9.0]])  # the padded value must not leak in
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.4                      # last token: no bootstrap
    d1 = 0.0 + 0.9 * 0.4 - 0.2          # 0.16
    d0 = 0.0 + 0.9 * 0.2 - 0.5          # -0.32
    a2, a1 = d2, d1 + 0.45 * d2         # 0.6, 0.43
    a0 = d0 + 0.45 * a1                 # -0.1265
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0]]), atol=1e-6)


def test_clipped_policy_loss():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac = policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: min(1.5, 1.2) * 1 -> 1.2; token 1: adv<0, max(-(-1*0.5), -(-1*0.8)) -> 0.8; token 2: 2.2
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 3)
    ratio_grad = torch.zeros(1, 3, requires_grad=True)
    policy_loss(ratio_grad + logp, old, adv, mask, 0.2)[0].backward()
    assert ratio_grad.grad[0, 0] == 0 and ratio_grad.grad[0, 1] == 0 and ratio_grad.grad[0, 2] != 0


def test_value_clipping_takes_the_worse_loss():
    old = torch.tensor([[0.0]])
    ret = torch.tensor([[1.0]])
    v = torch.tensor([[1.0]])  # unclipped error 0, clipped (0.2) error 0.8
    assert value_loss(v, old, ret, torch.ones(1, 1), 0.2).item() == pytest.approx(0.5 * 0.64)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)
    assert kl_penalty(logp, logp, "k3").item() == 0


def test_adaptive_kl_controller_moves_toward_target():
    kl = KLController(0.1, target=1.0, horizon=10)
    kl.update(3.0, n=5)
    assert kl.coef == pytest.approx(0.1 * 1.1)
    fixed = KLController(0.1, None, 10)
    fixed.update(3.0, 5)
    assert fixed.coef == 0.1


def test_ranking_loss_and_accuracy():
    c, r = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 3.0])
    assert accuracy(c, r) == pytest.approx(1 / 3)  # ties do not count as right
    want = -(torch.nn.functional.logsigmoid(torch.tensor([1.0, 0.0, -2.0]))).mean()
    assert ranking_loss(c, r).item() == pytest.approx(want.item())


def test_whiten_and_rule_accuracy():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, m)
    assert w[0, 3] == 0 and abs(w[0, :3].mean()) < 1e-6
    assert rule_accuracy(["sort: 2 1", "upper: ab"], ["1 2", "Ab"]) == 0.5
    assert rule_accuracy(["tell me a joke"], ["no"]) is None


def test_lr_schedule():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)
