"""The price of a cache: agreement, KL and logit difference against the exact model, teacher-forced."""

import math

import pytest
import torch

from kvbench.measure.price import price


def test_an_exact_cache_costs_nothing():
    ref = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    p = price(ref.argmax(-1), [ref[:, i] for i in range(5)], ref)
    assert p == {"agreement_rate": 1.0, "kl_mean": 0.0, "kl_max": 0.0, "logit_diff_max": 0.0}


def test_a_changed_step_is_priced_by_its_kl_and_its_token():
    ref = torch.zeros(1, 4, 2)
    ref[..., 0] = 1.0  # every step prefers token 0 with p = e/(e+1)
    mine = ref.clone()
    mine[0, 2] = torch.tensor([0.0, 1.0])  # step 2 flips
    p = price(mine.argmax(-1), [mine[:, i] for i in range(4)], ref)
    a = math.e / (math.e + 1)
    kl = a * math.log(a / (1 - a)) + (1 - a) * math.log((1 - a) / a)
    assert p["agreement_rate"] == 0.75 and p["logit_diff_max"] == 1.0
    assert p["kl_max"] == pytest.approx(kl, rel=1e-5) and p["kl_mean"] == pytest.approx(kl / 4, rel=1e-5)
