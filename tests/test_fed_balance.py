"""Balance plan and k-anonymised site summaries (pure code, no Flower)."""

from __future__ import annotations

import pandas as pd
import pytest

from medi_core.balance import Count, local_deficit, plan_balance
from medi_core.errors import ConfigError, MetadataError
from medi_core.site_summary import SiteSummary, summarize_counts

# BRCA-M2C counts of three real sites (see the shared data README).
BRCA = {
    "A7": {"tumor": 22, "lymph": 10, "stromal": 4},
    "A8": {"tumor": 38, "stromal": 5, "lymph": 4},
    "AC": {"stromal": 16, "tumor": 1},
}


def test_plan_max_targets_largest_site():
    plan = plan_balance(BRCA, policy="max")
    assert plan.targets == {"lymph": 10, "stromal": 16, "tumor": 38}


def test_plan_max_deficits_hand_computed():
    plan = plan_balance(BRCA, policy="max")
    assert plan.deficits["AC"] == {"lymph": 10, "stromal": 0, "tumor": 37}
    assert plan.deficits["A7"] == {"lymph": 0, "stromal": 12, "tumor": 16}


def test_plan_median_counts_absent_cells_as_zero():
    # lymph: counts (10, 4, 0) -> median 4; tumour: (22, 38, 1) -> 22; stromal: (4, 5, 16) -> 5.
    plan = plan_balance(BRCA, policy="median")
    assert plan.targets == {"lymph": 4, "stromal": 5, "tumor": 22}
    assert plan.deficits["AC"]["lymph"] == 4


def test_plan_median_rounds_half_up():
    plan = plan_balance({"x": {"a": 2}, "y": {"a": 3}}, policy="median")
    assert plan.targets["a"] == 3


def test_plan_fixed_target_and_cap():
    plan = plan_balance(BRCA, policy="fixed", fixed_target=20, cap_per_cell=5)
    assert plan.deficits["A8"] == {"lymph": 5, "stromal": 5, "tumor": 0}


def test_plan_quota_lists_only_needed_cells():
    plan = plan_balance(BRCA, policy="max")
    assert plan.quota("AC") == {"lymph": 10, "tumor": 38}


def test_plan_suppressed_count_bounds():
    # "<5" lies in 1..4: the target uses 4, the site's own deficit uses 1.
    counts = {"A": {"c": Count.below(5)}, "B": {"c": Count.exact(3)}}
    plan = plan_balance(counts, policy="max")
    assert plan.targets["c"] == 4
    assert plan.deficits["A"]["c"] == 3


def test_plan_fixed_without_target_raises():
    with pytest.raises(ConfigError, match="needs a target count"):
        plan_balance(BRCA, policy="fixed")


def test_plan_unknown_policy_raises():
    with pytest.raises(ConfigError, match="balance policy must be one of"):
        plan_balance(BRCA, policy="mean")


def test_local_deficit_uses_exact_count():
    assert local_deficit(16, 4) == 12
    assert local_deficit(16, 20) == 0
    assert local_deficit(16, 4, cap_per_cell=2) == 2


@pytest.mark.parametrize("text", ["12", "<5", "3..8"])
def test_count_text_round_trip(text):
    assert str(Count.parse(text)) == text


def test_count_sum_adds_bounds():
    assert Count.below(5) + Count.exact(10) == Count(11, 14)


def _table(rows):
    return pd.DataFrame(rows, columns=["class", "site", "count"])


def test_summary_suppresses_cells_under_k():
    summary = summarize_counts(_table([["tumor", "A7", 22], ["stromal", "A7", 4]]), ["class", "site"], k=5)
    assert str(summary.cells[("tumor", "A7")]) == "22"
    assert str(summary.cells[("stromal", "A7")]) == "<5"


def test_summary_k_one_keeps_every_count():
    summary = summarize_counts(_table([["stromal", "A7", 1]]), ["class", "site"], k=1)
    assert summary.cells[("stromal", "A7")].is_exact


def test_summary_json_round_trip():
    summary = summarize_counts(_table([["tumor", "A7", 22], ["stromal", None, 2]]), ["class", "site"], k=5)
    again = SiteSummary.from_json(summary.to_json())
    assert again.cells == summary.cells
    assert again.num_patches == 24


def test_summary_counts_by_site_and_class():
    table = pd.DataFrame([["t", "A7", "f", 3], ["t", "A7", "m", 9]], columns=["class", "site", "sex", "count"])
    summary = summarize_counts(table, ["class", "site", "sex"], k=5)
    assert summary.counts_by("site", "class") == {"A7": {"t": Count(10, 13)}}


def test_summary_malformed_json_raises():
    with pytest.raises(MetadataError, match="from site X is malformed"):
        SiteSummary.from_json('{"fields": ["class"]}', source="site X")


def test_summary_invalid_k_raises():
    with pytest.raises(MetadataError, match="k must be >= 1"):
        summarize_counts(_table([]), ["class", "site"], k=0)
