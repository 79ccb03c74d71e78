"""Experiment suites: YAML parsing and errors, job planning, baselines' data, the Markdown table."""

import numpy as np
import pytest

from experiments import suite as S
from tests.conftest import PROJECT

MINIMAL = """
name: tiny
entries:
  - method: fssuavl
"""


def error_of(text: str) -> str:
    with pytest.raises(S.SuiteError) as err:
        S.parse_suite(text, "s.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("s.yaml")
    return message


def test_minimal_suite_uses_run_config_defaults():
    suite = S.parse_suite(MINIMAL, "s.yaml")
    (entry,) = suite.entries
    assert (entry.method, entry.encoder, entry.strategy, entry.num_supernodes) == ("fssuavl", "resnet18_cifar", "fedavg", 6)
    (job,) = S.all_jobs(suite)
    assert job.kind == "federated" and job.config().encoder == "resnet18_cifar"


@pytest.mark.parametrize("text, words", [
    ("name: x\nentrys: []\n", "unknown key 'entrys'; valid: name, description"),
    ("entries:\n  - {method: fssuavl, encoders: vit_tiny_cifar}\n", "entries[1]: unknown key 'encoders'"),
    ("entries:\n  - {method: fssuavl, overrides: {num-rounds: 3}}\n", "overrides: unknown key 'num-rounds'"),
    ("defaults: {learning-rte: 0.1}\nentries:\n  - {method: fssuavl}\n", "defaults: unknown key 'learning-rte'"),
    ("evaluation: {ood: [x]}\nentries:\n  - {method: fssuavl}\n", "evaluation: unknown key 'ood'"),
    ("runner: {supernodes: 3}\nentries:\n  - {method: fssuavl}\n", "runner: unknown key 'supernodes'"),
    ("plots: {tsne: [1]}\nentries:\n  - {method: fssuavl}\n", "plots: unknown key 'tsne'"),
    ("entries:\n  - {method: fedssl}\n", "method: unknown value 'fedssl'; valid: fssuavl, fvssl"),
    ("entries:\n  - {method: fssuavl, strategy: fedfoo}\n", "strategy: unknown value 'fedfoo'"),
    ("entries:\n  - {method: fssuavl, overrides: {batch-size: large}}\n", "batch-size: expected int"),
    ("runner: {num-supernodes: six}\nentries:\n  - {method: fssuavl}\n", "runner.num-supernodes: expected int"),
    ("evaluation: {out-of-domain: ['digits:blur']}\nentries:\n  - {method: fssuavl}\n", "unknown shift 'blur'"),
    ("defaults: {run-dir: /tmp/x}\nentries:\n  - {method: fssuavl}\n", "'run-dir' is set by the suite"),
    ("entries:\n  - {method: fssuavl, sweep: {dirichlet-alpha: [1.0], seed: [1]}}\n", "sweep: expected one key"),
    ("entries:\n  - {method: fssuavl, sweep: {alpha: [1.0]}}\n", "sweep: unknown key 'alpha'"),
    ("entries: []\n", "'entries' is missing or empty"),
    ("evaluation: {image-dataset: esc50}\nentries:\n  - {method: fssuavl}\n", "image-dataset: unknown value 'esc50'"),
    ("entries: [\n", "not valid YAML"),
])
def test_bad_suites_give_one_line_errors(text, words):
    assert words in error_of(text)


def test_cli_reports_bad_suite_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("entries:\n  - {method: fssuavl, encoder: resnet18_cifar, colour: red}\n")
    assert S.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'colour'" in err
    assert S.main([str(tmp_path / "missing.yaml")]) == 2


def test_default_suite_plans_seven_jobs_with_shared_baseline_runs(capsys):
    suite = S.load_suite(PROJECT / "experiments" / "suites" / "default.yaml")
    methods = [(e.method, e.encoder, e.strategy) for e in suite.entries]
    assert len(methods) == 8 and methods.count(("fssuavl", "vit_tiny_cifar", "ldawa")) == 1
    jobs = S.all_jobs(suite)
    assert len(jobs) == 7 and jobs[-1].kind == "centralized"  # separate reuses FVSSL + FASSL runs
    by_role = {j.role: j for j in jobs if j.role != "fssuavl"}
    fvssl = dict(by_role["fvssl"].overrides)
    assert by_role["fvssl"].num_supernodes == 4 and by_role["fassl"].num_supernodes == 4  # 2 + 2 audio-visual
    assert fvssl["audio-dataset"] == "" and fvssl["frac-visual-clients"] == 1.0
    assert dict(by_role["fassl"].overrides)["image-dataset"] == ""
    central = by_role["centralized"]
    assert central.budget_job.role == "fssuavl" and dict(central.budget_job.overrides)["strategy"] == "fedavg"
    assert central.budget_job.id in {j.id for j in jobs}
    assert all(dict(j.overrides)["save-every"] == 3 for j in jobs)  # t-SNE at rounds 0 and 3
    assert S.main([str(PROJECT / "experiments" / "suites" / "default.yaml"), "--dry-run"]) == 0
    assert "7 training jobs" in capsys.readouterr().out


def test_ablation_sweeps_expand_and_identical_jobs_run_once():
    suite = S.load_suite(PROJECT / "experiments" / "suites" / "ablation.yaml")
    settings = [e.setting_text for e in suite.entries]
    assert "audio-data-share=0.25" in settings and "num-supernodes=10" in settings
    assert "dirichlet-alpha=0.1" in settings and "visual-data-share=0.5" in settings
    assert [e.num_supernodes for e in suite.entries if e.setting_text.startswith("num-supernodes")] == [4, 6, 10]
    jobs = S.all_jobs(suite)
    # share 1.0 (twice), alpha 0.5 and 6 clients are all the default federation
    assert len(jobs) == len(suite.entries) - 3


def test_single_modality_federations_hold_exactly_the_fssuavl_clients_data():
    from data_partition.partition import PlanSettings, build_plan

    labels = np.arange(800) % 10
    common = dict(partitioner="dirichlet", alpha=0.5, min_partition_size=2, visual_share=1.0, audio_share=1.0, seed=7)
    fssuavl = build_plan(PlanSettings(6, 0.4, 0.3, 0.3, **common), labels, labels)
    overrides, n = S.single_modality({}, 6, "image")
    fvssl = build_plan(PlanSettings(n, 1.0, 0.0, 0.0, **common), labels, None)
    overrides, n = S.single_modality({}, 6, "audio")
    fassl = build_plan(PlanSettings(n, 0.0, 1.0, 0.0, **common), None, labels)

    def parts(plan, attr):
        return sorted(tuple(sorted(getattr(p, attr))) for p in plan if len(getattr(p, attr)))
    assert parts(fvssl, "image_indices") == parts(fssuavl, "image_indices")
    assert parts(fassl, "audio_indices") == parts(fssuavl, "audio_indices")
    assert overrides["min-train-nodes"] == 2


def test_run_config_text_round_trips_through_the_launcher():
    from experiments.launch import parse_overrides

    overrides = {"strategy": "ldawa", "learning-rate": 0.05, "tensorboard": False, "num-server-rounds": 3,
                 "audio-dataset": "", "dirichlet-alpha": 1.0}
    assert parse_overrides(S._run_config_text(overrides)) == overrides


def rows():
    cost = dict(params=11_168_832, flops_image=277_708_800, flops_audio=1_110_835_200)
    ours = S.Row("FSSUAVL", "resnet18_cifar", "fedavg", metrics={
        "probe-image": 0.9, "knn-image": 0.8, "probe-audio": 0.7, "knn-audio": 0.6, "fusion-probe": 0.95,
        "ood-probe-digits:invert": 0.5}, **cost)
    vit = S.Row("FSSUAVL", "vit_tiny_cifar", "fedavg", metrics={
        "probe-image": 0.5, "knn-image": 0.5, "probe-audio": 0.5, "knn-audio": 0.5}, params=5_360_832,
        flops_image=183_500_000, flops_audio=730_000_000)
    fvssl = S.Row("FVSSL", "resnet18_cifar", "fedavg", metrics={
        "probe-image": 0.912, "knn-image": 0.80004, "probe-audio": 0.3, "knn-audio": 0.2, "fusion-probe": 0.9,
        "ood-probe-digits:invert": 0.6}, **cost)
    separate = S.Row("Separate (FVSSL+FASSL)", "resnet18_cifar", "fedavg", metrics={
        "probe-image": 0.912, "knn-image": 0.8, "probe-audio": 0.65, "knn-audio": 0.61}, params=2 * 11_168_832,
        flops_image=277_708_800, flops_audio=1_110_835_200)
    central = S.Row("Centralized", "resnet18_cifar", "- (fedavg budget)", metrics={
        "probe-image": 0.85, "knn-image": 0.7, "probe-audio": 0.75, "knn-audio": 0.6, "fusion-probe": 0.95,
        "ood-probe-digits:invert": 0.4}, **cost)
    failed = S.Row("FASSL", "resnet18_cifar", "fedavg", status="not trained (fassl-x failed)")
    return [ours, vit, fvssl, separate, central, failed]


def test_table_rows_are_exact_and_mark_where_fssuavl_loses():
    lines = S.render_table(rows(), ["digits:invert"])
    assert lines == [
        "| method | encoder | strategy | image probe | image kNN | audio probe | audio kNN | fusion probe | "
        "OOD digits:invert probe | params (M) | GFLOPs image / audio | FSSUAVL loses to |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| FSSUAVL | resnet18_cifar | fedavg | 90.0 | 80.0 | 70.0 | 60.0 | 95.0 | 50.0 | 11.17 | 0.278 / 1.111 | "
        "FVSSL: image probe +1.2, OOD digits:invert probe +10.0; Separate (FVSSL+FASSL): image probe +1.2, "
        "audio kNN +1.0; Centralized: audio probe +5.0 |",
        "| FSSUAVL | vit_tiny_cifar | fedavg | 50.0 | 50.0 | 50.0 | 50.0 | n/a | n/a | 5.36 | 0.183 / 0.730 | "
        "no baseline in this suite |",
        "| FVSSL | resnet18_cifar | fedavg | **91.2** | 80.0 | 30.0 | 20.0 | 90.0 | **60.0** | 11.17 | "
        "0.278 / 1.111 |  |",
        "| Separate (FVSSL+FASSL) | resnet18_cifar | fedavg | **91.2** | 80.0 | 65.0 | **61.0** | n/a | n/a | 22.34 | "
        "0.278 / 1.111 |  |",
        "| Centralized | resnet18_cifar | - (fedavg budget) | 85.0 | 70.0 | **75.0** | 60.0 | 95.0 | 40.0 | 11.17 | "
        "0.278 / 1.111 |  |",
        "| FASSL | resnet18_cifar | fedavg | not trained (fassl-x failed) |  |  |  |  |  |  |  |  |",
    ]


def test_loss_summary_and_fusion_table():
    table = rows()
    table[0].metrics.update({"paired-probe-image": 0.9, "paired-probe-audio": 0.72})
    summary = S.loss_summary(table, ["digits:invert"])
    assert summary[0].startswith("- FSSUAVL resnet18_cifar fedavg loses to: FVSSL image probe 91.2 vs 90.0;")
    assert summary[1] == ("- FSSUAVL vit_tiny_cifar fedavg: no baseline with this encoder, strategy and setting "
                          "in this suite (not compared).")
    fusion = S.render_fusion(table)
    assert fusion[2] == "| FSSUAVL | resnet18_cifar | fedavg | 90.0 | 72.0 | 95.0 | +5.0 |"
    assert len(fusion) == 3  # rows without paired numbers are left out


def test_report_file(tmp_path):
    suite = S.parse_suite(MINIMAL + "evaluation: {out-of-domain: ['digits:invert']}\n", "s.yaml")
    path = S.write_report(suite, rows(), tmp_path, [tmp_path / "accuracy_per_round.png"], ["a note"])
    text = path.read_text()
    assert "## Where FSSUAVL loses" in text and "- a note" in text
    assert "`digits:invert`: digits, pixel values inverted" in text
    assert "![accuracy_per_round](accuracy_per_round.png)" in text


def test_untrained_reference_is_compared_with_every_strategy():
    cost = dict(params=1, flops_image=0, flops_audio=0)
    table = [
        S.Row("FSSUAVL", "resnet18_cifar", "fedavg", metrics={"probe-image": 0.9, "probe-audio": 0.7}, **cost),
        S.Row("FSSUAVL", "resnet18_cifar", "ldawa", metrics={"probe-image": 0.8, "probe-audio": 0.8}, **cost),
        S.Row("FSSUAVL", "vit_tiny_cifar", "fedavg", metrics={"probe-image": 0.1, "probe-audio": 0.1}, **cost),
        S.Row(S.UNTRAINED_METHOD, "resnet18_cifar", S.UNTRAINED_STRATEGY,
              metrics={"probe-image": 0.85, "probe-audio": 0.6}, **cost),
    ]
    lines = S.render_table(table, [])
    assert lines[2].endswith("| none (vs Untrained (initial weights)) |")
    assert lines[3].endswith("| Untrained (initial weights): image probe +5.0 |")
    assert lines[4].endswith("| no baseline in this suite |")  # another encoder: not compared
    assert "| **85.0** | n/a | 60.0 |" in lines[5]  # higher than the ldawa row's image probe
    summary = S.loss_summary(table, [])
    assert summary[0] == ("- FSSUAVL resnet18_cifar fedavg: higher than or equal to Untrained (initial weights) "
                          "on every accuracy column.")


def test_real_out_of_domain_set_must_be_present_under_the_data_root(tmp_path):
    text = (f"defaults: {{data-root: '{tmp_path}'}}\nevaluation: {{out-of-domain: [cifar10]}}\n"
            "entries:\n  - {method: fssuavl}\n")
    message = error_of(text)
    assert "evaluation.out-of-domain: cifar10" in message
