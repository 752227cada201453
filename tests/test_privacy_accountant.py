"""The site's privacy accountant: epsilon values, persistence across restarts, budget refusal, calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from medi_core.errors import PrivacyBudgetExceeded, PrivacyError
from medi_core.privacy import SiteAccountant, calibrate_noise_multiplier, epsilon_of
from privacy_support import brca, brca_spec, private_trainer

DELTA = 1e-5
SIGMA, RATE = 1.1, 0.05  # a typical DP-SGD setting


def _record(accountant: SiteAccountant, steps: int) -> None:
    for _ in range(steps):
        accountant.record_step(noise_multiplier=SIGMA, sample_rate=RATE)


def test_accountant_empty_spends_zero(tmp_path):
    accountant = SiteAccountant.load_or_create(tmp_path / "acc.json", kind="rdp", delta=DELTA)
    assert accountant.epsilon() == 0.0


def test_accountant_full_batch_matches_formula():
    # q = 1: the Gaussian mechanism has RDP alpha * steps / (2 sigma^2); Opacus converts RDP to
    # (epsilon, delta) with eps(a) = rdp(a) - (log delta + log a) / (a - 1) + log((a - 1) / a).
    sigma, steps = 2.0, 4
    alphas = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = alphas * steps / (2 * sigma**2)
    expected = np.min(rdp - (np.log(DELTA) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas))
    assert epsilon_of([(sigma, 1.0, steps)], delta=DELTA, kind="rdp") == pytest.approx(expected, rel=1e-9)


def test_accountant_state_survives_reload(tmp_path):
    path = tmp_path / "site" / "acc.json"
    first = SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA, site="A7")
    _record(first, 3)
    second = SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA, site="A7")
    assert second.steps == 3
    assert second.epsilon() == first.epsilon()


def test_accountant_restart_continues_epsilon(tmp_path):
    path = tmp_path / "acc.json"
    _record(SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA), 20)
    resumed = SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA)
    _record(resumed, 20)
    assert resumed.epsilon() == pytest.approx(epsilon_of([(SIGMA, RATE, 40)], delta=DELTA, kind="rdp"), rel=1e-12)


def test_accountant_prv_persists(tmp_path):
    path = tmp_path / "acc.json"
    _record(SiteAccountant.load_or_create(path, kind="prv", delta=DELTA), 10)
    resumed = SiteAccountant.load_or_create(path, kind="prv", delta=DELTA)
    assert resumed.epsilon() == pytest.approx(epsilon_of([(SIGMA, RATE, 10)], delta=DELTA, kind="prv"))


def test_accountant_rejects_other_delta(tmp_path):
    path = tmp_path / "acc.json"
    _record(SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA), 1)
    with pytest.raises(PrivacyError, match="created with delta=1e-05"):
        SiteAccountant.load_or_create(path, kind="rdp", delta=2 * DELTA)


def test_accountant_rejects_other_mechanism(tmp_path):
    path = tmp_path / "acc.json"
    _record(SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA), 1)
    with pytest.raises(PrivacyError, match="uses 'rdp'"):
        SiteAccountant.load_or_create(path, kind="prv", delta=DELTA)


def test_accountant_rejects_corrupt_file(tmp_path):
    path = tmp_path / "acc.json"
    path.write_text("{not json")
    with pytest.raises(PrivacyError, match="cannot read the privacy accountant state"):
        SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA)


def test_accountant_file_lists_rounds(tmp_path):
    path = tmp_path / "acc.json"
    accountant = SiteAccountant.load_or_create(path, kind="rdp", delta=DELTA)
    _record(accountant, 2)
    accountant.record_round(1, steps=2, epsilon=accountant.epsilon())
    stored = json.loads(path.read_text())
    assert stored["history"] == [[SIGMA, RATE, 2]]
    assert stored["rounds"][0]["round"] == 1


def test_budget_check_raises_above_max(tmp_path):
    accountant = SiteAccountant.load_or_create(tmp_path / "acc.json", kind="rdp", delta=DELTA, site="A7")
    after_ten = epsilon_of([(SIGMA, RATE, 10)], delta=DELTA, kind="rdp")
    with pytest.raises(PrivacyBudgetExceeded, match="site A7, round 3: training 10 more steps"):
        accountant.check_budget(
            noise_multiplier=SIGMA, sample_rate=RATE, num_steps=10, max_epsilon=0.99 * after_ten, round_id=3
        )


def test_budget_check_allows_within_max(tmp_path):
    accountant = SiteAccountant.load_or_create(tmp_path / "acc.json", kind="rdp", delta=DELTA)
    after_ten = epsilon_of([(SIGMA, RATE, 10)], delta=DELTA, kind="rdp")
    projected = accountant.check_budget(noise_multiplier=SIGMA, sample_rate=RATE, num_steps=10, max_epsilon=after_ten)
    assert projected == after_ten


def test_calibration_reaches_target():
    sigma = calibrate_noise_multiplier(target_epsilon=3.0, delta=DELTA, sample_rate=RATE, num_steps=200)
    spent = epsilon_of([(sigma, RATE, 200)], delta=DELTA, kind="rdp")
    assert spent <= 3.0
    assert spent >= 0.999 * 3.0


def test_calibration_resumes_after_history():
    full = calibrate_noise_multiplier(target_epsilon=3.0, delta=DELTA, sample_rate=RATE, num_steps=200)
    rest = calibrate_noise_multiplier(
        target_epsilon=3.0, delta=DELTA, sample_rate=RATE, num_steps=100, history=[(full, RATE, 100)]
    )
    assert rest == pytest.approx(full, rel=1e-3)


def test_calibration_rejects_spent_budget():
    with pytest.raises(PrivacyBudgetExceeded, match="already spent"):
        calibrate_noise_multiplier(
            target_epsilon=0.5, delta=DELTA, sample_rate=RATE, num_steps=10, history=[(0.5, RATE, 1000)]
        )


def test_private_trainer_restart_continues(tmp_path):
    dataset = brca(32)
    spec = brca_spec(dataset)
    state = tmp_path / "site-A7" / "privacy_accountant.json"
    first = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=2, state_path=state)
    first.train_steps(dataset, 2, round_id=1)
    first.close()
    del first  # the process "stops"; only the file on disk remains

    second = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=2, state_path=state, seed=5)
    result = second.train_steps(dataset, 1, round_id=2)
    expected_before = epsilon_of([(1.0, 2 / len(dataset), 2)], delta=result.delta, kind="rdp")
    expected_after = epsilon_of([(1.0, 2 / len(dataset), 3)], delta=result.delta, kind="rdp")
    assert result.epsilon_before == pytest.approx(expected_before, rel=1e-12)
    assert result.epsilon == pytest.approx(expected_after, rel=1e-12)
    second.close()


def test_private_trainer_refuses_over_budget(tmp_path):
    dataset = brca(32)
    spec = brca_spec(dataset)
    state = tmp_path / "privacy_accountant.json"
    private = private_trainer(
        "tiny", spec, num_examples=len(dataset), batch_size=2, state_path=state, max_epsilon=0.01
    )
    before = {n: p.detach().clone() for n, p in private.trainer.model.named_parameters()}
    with pytest.raises(PrivacyBudgetExceeded, match="above this site's maximum 0.01"):
        private.train_steps(dataset, 5, round_id=4)
    unchanged = all(torch.equal(p, before[n]) for n, p in private.trainer.model.named_parameters())
    assert unchanged
    assert private.accountant.steps == 0
    assert math.isclose(private.epsilon, 0.0)
    private.close()
