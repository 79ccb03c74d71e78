"""Seeds in suites: one job per seed, per-seed evaluation (untrained reference included), statistics."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from scipy import stats

from experiments import suite_eval
from experiments.plots import mean_band
from experiments.suite_plan import all_jobs, entry_jobs, parse_suite
from experiments.suite_spec import SuiteError
from experiments.suite_stats import paired_difference, summarize

PLAN = """
seeds: [1, 2]
entries:
  - {method: fssuavl}
  - {method: separate}
  - {method: centralized}
  - {method: fssuavl, label: same job again}
"""


def test_every_job_runs_once_per_seed_and_identical_jobs_once():
    suite = parse_suite(PLAN, "s.yaml")
    assert suite.seeds == [1, 2]
    jobs = all_jobs(suite)
    assert len(jobs) == 2 * 4  # per seed: fssuavl, fvssl, fassl, centralized (the label's entry reuses fssuavl)
    assert [j.seed for j in jobs] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert all(f"-seed{j.seed}-" in j.id and j.config().seed == j.seed for j in jobs)
    for central in (j for j in jobs if j.kind == "centralized"):
        assert central.budget_job.seed == central.seed and central.budget_job.id in {j.id for j in jobs}
        assert jobs.index(central.budget_job) < jobs.index(central)
    first, again = suite.entries[0], suite.entries[-1]
    assert entry_jobs(suite, first, 2) == entry_jobs(suite, again, 2) != entry_jobs(suite, first, 1)


def test_default_seed_is_the_run_configs():
    assert parse_suite("entries: [{method: fssuavl}]", "s.yaml").seeds == [42]
    suite = parse_suite("defaults: {seed: 7}\nentries: [{method: fssuavl}]", "s.yaml")
    assert suite.seeds == [7] and all_jobs(suite)[0].config().seed == 7


@pytest.mark.parametrize("text, words", [
    ("seeds: []\nentries: [{method: fssuavl}]", "seeds: must not be empty"),
    ("seeds: [1, 1]\nentries: [{method: fssuavl}]", "seeds: each seed once"),
    ("seeds: [-1]\nentries: [{method: fssuavl}]", "seeds[1]: must be >= 0"),
    ("seeds: 3\nentries: [{method: fssuavl}]", "seeds: expected a list, got 3"),
    ("seeds: [1]\ndefaults: {seed: 2}\nentries: [{method: fssuavl}]", "not both"),
    ("entries: [{method: fssuavl, overrides: {seed: 3}}]", "'seed' is set by the suite's top-level 'seeds' list"),
    ("entries: [{method: fssuavl, sweep: {seed: [1, 2]}}]", "'seed' cannot be swept here"),
])
def test_seed_errors_are_one_line(text, words):
    with pytest.raises(SuiteError) as err:
        parse_suite(text, "s.yaml")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_paired_interval_matches_a_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 5), rng.normal(0.78, 0.02, 5)
    diff = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (diff.mean, diff.low, diff.high, diff.n) == pytest.approx((np.mean(a - b), ci.low, ci.high, 5))
    assert diff.clear == (ci.low > 0 or ci.high < 0)
    # only seeds both sides have are paired; one seed gives no interval and never a clear difference
    one = paired_difference({1: 0.9, 2: 0.5}, {1: 0.1, 3: 0.2})
    assert one.n == 1 and one.seeds == (1,) and not one.clear and one.text() == "+80.0 points, n=1"
    assert paired_difference({1: 0.9}, {2: 0.1}) is None
    # the same difference on every seed (0.1 up to float noise): no spread, no interval, not clear
    same = paired_difference({1: 0.9, 2: 0.8, 3: 0.3}, {1: 0.8, 2: 0.7, 3: 0.2})
    assert same.n == 3 and not same.clear and same.text() == "+10.0 points, n=3 (the same on every seed: no interval)"
    assert summarize([0.9, 0.91, 0.92]).text() == "91.0 ± 1.0 (n=3)" and summarize([0.5]).text() == "50.0 (n=1)"


def test_accuracy_plot_band_is_mean_and_sample_std_over_seeds():
    runs = [{"knn-image": [(0, 0.1), (1, 0.5)]}, {"knn-image": [(0, 0.3), (1, 0.7), (2, 0.9)]}]
    rounds, mean, std = mean_band(runs, "knn-image")
    assert rounds.tolist() == [0, 1, 2]
    assert mean == pytest.approx([0.2, 0.6, 0.9]) and std == pytest.approx([np.sqrt(0.02), np.sqrt(0.02), 0.0])


@pytest.fixture
def tiny_suite(data_root):
    text = f"""
seeds: [1, 2]
defaults: {{encoder: test_resnet, projection-hidden-dim: 16, projection-dim: 8, data-root: '{data_root}'}}
evaluation: {{max-train-samples: 120, max-test-samples: 60, knn-k: 5, out-of-domain: ['digits:invert']}}
entries:
  - {{method: fssuavl}}
  - {{method: fvssl}}
"""
    return parse_suite(text, "tiny.yaml")


def fake_runs(suite, folder) -> dict:
    """Run folders whose 'trained' weights are the seed's initial weights (as the ServerApp draws them)."""
    from models.factory import build_model

    runs = {}
    for job in all_jobs(suite):
        run = folder / job.id
        run.mkdir(parents=True)
        config = job.config()
        (run / "config.json").write_text(json.dumps({k.replace("_", "-"): v for k, v in asdict(config).items()}))
        torch.manual_seed(config.seed)
        torch.save(build_model(config).state_dict(), run / "final_model.pt")
        (run / "metrics.jsonl").write_text("".join(json.dumps({"round": r, "eval": {"knn-image": 0.1 * r + job.seed}})
                                                   + "\n" for r in (0, 1)))
        runs[job.id] = run
    return runs


def test_every_seed_is_evaluated_and_the_untrained_reference_uses_each_seeds_weights(tiny_suite, tmp_path):
    runs = fake_runs(tiny_suite, tmp_path)
    missing = entry_jobs(tiny_suite, tiny_suite.entries[1], 2)[0].id
    del runs[missing]  # FVSSL's seed-2 run failed
    rows, series = suite_eval.evaluate_suite(tiny_suite, runs)
    ours, fvssl, untrained, floor = rows
    assert untrained.method == suite_eval.UNTRAINED_METHOD and floor.method == suite_eval.FLOOR_METHOD
    assert sorted(floor.per_seed) == [1, 2] and "ood-probe-digits:invert" in floor.per_seed[1]  # OOD floors too
    assert floor.per_seed[1]["probe-image"] != untrained.per_seed[1]["probe-image"]
    assert sorted(ours.per_seed) == sorted(untrained.per_seed) == [1, 2] and sorted(fvssl.per_seed) == [1]
    assert fvssl.missing == {2: f"{missing} failed"} and fvssl.status == "ok"
    for seed in (1, 2):  # the fake run of a seed holds that seed's initial weights: the same numbers
        mine = {k: v for k, v in ours.per_seed[seed].items() if k != "eval-seconds"}
        assert mine == {k: v for k, v in untrained.per_seed[seed].items() if k != "eval-seconds"}
        assert 0 <= mine["probe-image"] <= 1 and "ood-probe-digits:invert" in mine
    assert ours.per_seed[1] != ours.per_seed[2]  # other seed, other weights and draws
    assert [s["knn-image"] for s in series["FSSUAVL test_resnet fedavg"]] == [[(0, 1.0), (1, 1.1)],
                                                                              [(0, 2.0), (1, 2.1)]]


@pytest.mark.parametrize("sweep, evaluations_per_seed", [
    ("{visual-data-share: [0.1, 0.5, 1.0]}", 1),  # the shares only thin the clients' parts: one evaluation
    ("{image-size: [16, 24]}", 2),               # another evaluation transform: one each
])
def test_reference_rows_are_evaluated_once_per_distinct_run_config(monkeypatch, sweep, evaluations_per_seed):
    suite = parse_suite(f"seeds: [1, 2]\nentries:\n  - {{method: fssuavl, sweep: {sweep}}}\n", "refs.yaml")
    calls = {"untrained": [], "floor": []}

    def fake(kind):
        def evaluate(suite, entry, seed, row, cache):
            calls[kind].append((seed, entry.setting_text))
            row.per_seed[seed] = {"knn-image": len(calls[kind]) + 10 * seed}
            row.params = 7
        return evaluate

    monkeypatch.setattr(suite_eval, "evaluate_untrained", fake("untrained"))
    monkeypatch.setattr(suite_eval, "evaluate_floor", fake("floor"))
    rows, _ = suite_eval.evaluate_suite(suite, runs={})
    references = [r for r in rows if r.reference]
    assert len(references) == 2 * len(suite.entries)  # still one untrained and one floor row per setting
    assert len(calls["untrained"]) == len(calls["floor"]) == 2 * evaluations_per_seed
    for kind in (suite_eval.UNTRAINED_METHOD, suite_eval.FLOOR_METHOD):
        of_kind = [r for r in references if r.method == kind]
        distinct = {json.dumps(r.per_seed, sort_keys=True) for r in of_kind}
        assert len(distinct) == evaluations_per_seed and all(r.params == 7 for r in of_kind)
        assert all(sorted(r.per_seed) == [1, 2] for r in of_kind)
