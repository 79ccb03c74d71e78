"""Experiment suites: YAML parsing and errors, job planning, baselines' data, the Markdown table."""

import numpy as np
import pytest

from experiments import suite as S
from experiments import suite_plan as P
from experiments import suite_report as R
from experiments.suite_eval import UNTRAINED_METHOD, UNTRAINED_STRATEGY, Row
from experiments.suite_spec import SuiteError
from tests.conftest import PROJECT

MINIMAL = """
name: tiny
entries:
  - method: fssuavl
"""


def error_of(text: str) -> str:
    with pytest.raises(SuiteError) as err:
        P.parse_suite(text, "s.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("s.yaml")
    return message


def test_minimal_suite_uses_run_config_defaults():
    suite = P.parse_suite(MINIMAL, "s.yaml")
    (entry,) = suite.entries
    assert (entry.method, entry.encoder, entry.strategy, entry.num_supernodes) == ("fssuavl", "resnet18_half_cifar", "fedavg", 6)
    (job,) = P.all_jobs(suite)
    assert job.kind == "federated" and job.config().encoder == "resnet18_half_cifar"


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


def test_default_suite_plans_seven_jobs_per_seed_with_shared_baseline_runs(capsys):
    suite = P.load_suite(PROJECT / "experiments" / "suites" / "default.yaml")
    methods = [(e.method, e.encoder, e.strategy) for e in suite.entries]
    assert len(methods) == 8 and methods.count(("fssuavl", "vit_tiny_cifar", "fedavg")) == 1
    assert suite.seeds == [0, 1, 2]
    jobs = P.all_jobs(suite)
    assert len(jobs) == 3 * 7 and {jobs[5].kind, jobs[6].kind} == {"centralized", "supervised"}  # separate
    # reuses the FVSSL + FASSL runs
    by_role = {j.role: j for j in jobs if j.role != "fssuavl" and j.seed == 0}
    fvssl = dict(by_role["fvssl"].overrides)
    assert by_role["fvssl"].num_supernodes == 4 and by_role["fassl"].num_supernodes == 4  # 2 + 2 audio-visual
    assert fvssl["audio-dataset"] == "" and fvssl["frac-visual-clients"] == 1.0
    assert dict(by_role["fassl"].overrides)["image-dataset"] == ""
    central = by_role["centralized"]
    assert central.budget_job.role == "fssuavl" and dict(central.budget_job.overrides)["strategy"] == "fedavg"
    assert central.budget_job.id in {j.id for j in jobs}
    assert by_role["supervised"].budget_job.id == central.budget_job.id  # the ceiling spends the same budget
    assert all(dict(j.overrides)["save-every"] == 6 for j in jobs)  # t-SNE at rounds 0 and 6
    assert S.main([str(PROJECT / "experiments" / "suites" / "default.yaml"), "--dry-run"]) == 0
    assert "21 training jobs" in capsys.readouterr().out


def test_ablation_sweeps_expand_and_identical_jobs_run_once():
    suite = P.load_suite(PROJECT / "experiments" / "suites" / "ablation.yaml")
    settings = [e.setting_text for e in suite.entries]
    assert "audio-data-share=0.25" in settings and "num-supernodes=10" in settings
    assert "dirichlet-alpha=0.1" in settings and "visual-data-share=0.5" in settings
    assert [e.num_supernodes for e in suite.entries if e.setting_text.startswith("num-supernodes")] == [4, 6, 10]
    jobs = P.all_jobs(suite)
    # share 1.0 (twice), alpha 0.5 and 6 clients are all the default federation
    assert len(jobs) == len(suite.entries) - 3


def test_single_modality_federations_hold_exactly_the_fssuavl_clients_data():
    from data_partition.partition import PlanSettings, build_plan

    labels = np.arange(800) % 10
    common = dict(partitioner="dirichlet", alpha=0.5, min_partition_size=2, visual_share=1.0, audio_share=1.0, seed=7)
    fssuavl = build_plan(PlanSettings(6, 0.4, 0.3, 0.3, **common), labels, labels)
    overrides, n = P.single_modality({}, 6, "image")
    fvssl = build_plan(PlanSettings(n, 1.0, 0.0, 0.0, **common), labels, None)
    overrides, n = P.single_modality({}, 6, "audio")
    fassl = build_plan(PlanSettings(n, 0.0, 1.0, 0.0, **common), None, labels)

    def parts(plan, attr):
        return sorted(tuple(sorted(getattr(p, attr))) for p in plan if len(getattr(p, attr)))
    assert parts(fvssl, "image_indices") == parts(fssuavl, "image_indices")
    assert parts(fassl, "audio_indices") == parts(fssuavl, "audio_indices")
    assert overrides["min-train-nodes"] == 2


def test_run_config_goes_to_the_launcher_as_a_toml_file(tmp_path):
    from experiments.common import load_overrides, write_run_config

    overrides = {"strategy": "ldawa", "learning-rate": 0.05, "tensorboard": False, "num-server-rounds": 3,
                 "audio-dataset": "", "dirichlet-alpha": 1.0, "run-dir": "/tmp/it's \"here\""}
    path = write_run_config(overrides, tmp_path / "run_config.toml")
    assert load_overrides(str(path)) == overrides


SEEDS = (1, 2, 3)
COST = dict(params=11_168_832, flops_image=277_708_800, flops_audio=1_110_835_200)


def per_seed(**columns) -> dict:
    """per_seed(probe_image=(.9, .91, .92), ...) -> {seed: {"probe-image": .9, ...}} over the seeds given."""
    out: dict[int, dict] = {}
    for key, values in columns.items():
        for seed, value in zip(SEEDS, values):
            out.setdefault(seed, {})[key.replace("_", "-").replace("ood-probe-digits-invert",
                                                                   "ood-probe-digits:invert")] = value
    return out


def rows():
    ours = Row("FSSUAVL", "resnet18_cifar", "fedavg", per_seed=per_seed(
        probe_image=(.90, .91, .92), knn_image=(.80, .82, .78), probe_audio=(.70, .72, .71),
        knn_audio=(.6, .6, .6), fusion_probe=(.95, .95, .95), ood_probe_digits_invert=(.50, .52, .51)), **COST)
    vit = Row("FSSUAVL", "vit_tiny_cifar", "fedavg", per_seed=per_seed(
        probe_image=(.5,), knn_image=(.5,), probe_audio=(.5,), knn_audio=(.5,)), params=5_360_832,
        flops_image=183_500_000, flops_audio=730_000_000)
    fvssl = Row("FVSSL", "resnet18_cifar", "fedavg", per_seed=per_seed(
        probe_image=(.93, .935, .955), knn_image=(.81, .80, .80), probe_audio=(.30, .31, .33),
        knn_audio=(.20, .22, .21), fusion_probe=(.90, .91, .89), ood_probe_digits_invert=(.60, .63, .61)), **COST)
    central = Row("Centralized", "resnet18_cifar", "- (fedavg budget)", per_seed=per_seed(
        probe_image=(.85, .87), knn_image=(.7, .7), probe_audio=(.75, .78), knn_audio=(.6, .6)), **COST)
    failed = Row("FASSL", "resnet18_cifar", "fedavg", status="not trained (fassl-x failed)")
    return [ours, vit, fvssl, central, failed]


def test_cells_are_mean_and_std_over_seeds_and_only_clear_differences_are_bold():
    lines = R.render_table(rows(), ["digits:invert"])
    assert lines == [
        "| method | encoder | strategy | image probe | image kNN | audio probe | audio kNN | fusion probe | "
        "OOD digits:invert probe | params (M) | GFLOPs image / audio | FSSUAVL loses to (clear, points) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| FSSUAVL | resnet18_cifar | fedavg | 91.0 ± 1.0 (n=3) | 80.0 ± 2.0 (n=3) | 71.0 ± 1.0 (n=3) | "
        "60.0 ± 0.0 (n=3) | 95.0 ± 0.0 (n=3) | 51.0 ± 1.0 (n=3) | 11.17 | 0.278 / 1.111 | "
        "FVSSL: image probe +3.0 [+1.8, +4.2], OOD digits:invert probe +10.3 [+8.9, +11.8] |",
        "| FSSUAVL | vit_tiny_cifar | fedavg | 50.0 (n=1) | 50.0 (n=1) | 50.0 (n=1) | 50.0 (n=1) | n/a | n/a | "
        "5.36 | 0.183 / 0.730 | no baseline in this suite |",
        # image kNN is higher on average (80.3 vs 80.0) but its interval holds 0: not bold
        "| FVSSL | resnet18_cifar | fedavg | **94.0 ± 1.3 (n=3)** | 80.3 ± 0.6 (n=3) | 31.3 ± 1.5 (n=3) | "
        "21.0 ± 1.0 (n=3) | 90.0 ± 1.0 (n=3) | **61.3 ± 1.5 (n=3)** | 11.17 | 0.278 / 1.111 |  |",
        # +5.5 points audio probe on two seeds: interval [-0.9, +11.9] holds 0, not a clear loss
        "| Centralized | resnet18_cifar | - (fedavg budget) | 86.0 ± 1.4 (n=2) | 70.0 ± 0.0 (n=2) | "
        "76.5 ± 2.1 (n=2) | 60.0 ± 0.0 (n=2) | n/a | n/a | 11.17 | 0.278 / 1.111 |  |",
        "| FASSL | resnet18_cifar | fedavg | not trained (fassl-x failed) |  |  |  |  |  |  |  |  |",
    ]


def test_loss_and_win_lists_state_paired_intervals():
    table = rows()
    losses = R.loss_summary(table, ["digits:invert"])
    assert losses == [
        "- FSSUAVL resnet18_cifar fedavg loses to: FVSSL image probe +3.0 [+1.8, +4.2] points, n=3; "
        "FVSSL OOD digits:invert probe +10.3 [+8.9, +11.8] points, n=3.",
        "- FSSUAVL vit_tiny_cifar fedavg: no baseline with this encoder, strategy and setting in this suite "
        "(not compared).",
    ]
    wins = R.win_summary(table, ["digits:invert"])
    assert wins[0] == ("- FSSUAVL resnet18_cifar fedavg wins over: FVSSL audio probe +39.7 [+35.9, +43.5] points, "
                       "n=3; FVSSL audio kNN +39.0 [+36.5, +41.5] points, n=3; FVSSL fusion probe +5.0 [+2.5, +7.5] "
                       "points, n=3.")
    assert "FVSSL image kNN" not in wins[0] and "FVSSL image kNN" not in losses[0]  # no clear difference


def test_one_seed_never_gives_a_clear_difference():
    one = [Row(r.method, r.encoder, r.strategy, per_seed={1: r.per_seed[1]}, **COST) for r in rows()[:4]]
    assert R.loss_summary(one, [])[0] == (
        "- FSSUAVL resnet18_cifar fedavg: no clear difference (vs FVSSL, Centralized; n=1 paired seed: "
        "no confidence interval).")
    assert "**" not in "".join(R.render_table(one, []))
    assert R.render_table(one, [])[2].endswith("| no clear difference (vs FVSSL, Centralized) |")


def test_fusion_table_over_seeds():
    table = rows()
    for seed, (image, audio) in zip(SEEDS, ((.9, .7), (.92, .74), (.91, .72))):
        table[0].per_seed[seed].update({"paired-probe-image": image, "paired-probe-audio": audio})
    fusion = R.render_fusion(table)
    # gains over the best single modality: 5, 3, 4 points
    assert fusion[2] == ("| FSSUAVL | resnet18_cifar | fedavg | 91.0 ± 1.0 (n=3) | 72.0 ± 2.0 (n=3) | "
                         "95.0 ± 0.0 (n=3) | +4.0 ± 1.0 (n=3) |")
    assert len(fusion) == 3  # rows without paired numbers are left out


def test_report_file(tmp_path):
    suite = P.parse_suite(MINIMAL + "seeds: [1, 2, 3]\nevaluation: {out-of-domain: ['digits:invert']}\n", "s.yaml")
    path = R.write_report(suite, rows(), tmp_path, [tmp_path / "accuracy_per_round.png"], ["a note"])
    text = path.read_text()
    assert "## Where FSSUAVL loses" in text and "## Where FSSUAVL wins" in text and "- a note" in text
    assert "over the seeds (1, 2, 3)" in text
    assert "`digits:invert`: digits, pixel values inverted" in text
    assert "![accuracy_per_round](accuracy_per_round.png)" in text


def test_untrained_reference_is_compared_with_every_strategy():
    two = {1: {}, 2: {}}

    def row(method, encoder, strategy, image, audio):
        return Row(method, encoder, strategy, per_seed={s: {"probe-image": i, "probe-audio": a}
                                                        for s, i, a in zip(two, image, audio)}, **COST)
    table = [
        row("FSSUAVL", "resnet18_cifar", "fedavg", (.90, .92), (.70, .71)),
        row("FSSUAVL", "resnet18_cifar", "ldawa", (.80, .805), (.80, .80)),
        row("FSSUAVL", "vit_tiny_cifar", "fedavg", (.1, .1), (.1, .1)),
        row(UNTRAINED_METHOD, "resnet18_cifar", UNTRAINED_STRATEGY, (.85, .86), (.60, .61)),
    ]
    lines = R.render_table(table, [])
    assert lines[2].endswith("| no clear difference (vs Untrained (initial weights)) |")
    assert lines[3].endswith("| Untrained (initial weights): image probe +5.2 [+2.1, +8.4] |")
    assert lines[4].endswith("| no baseline in this suite |")  # another encoder: not compared
    assert "| **85.5 ± 0.7 (n=2)** | n/a | 60.5 ± 0.7 (n=2) |" in lines[5]  # clearly above the ldawa row
    assert R.win_summary(table, [])[1] == ("- FSSUAVL resnet18_cifar ldawa wins over: Untrained (initial weights) "
                                           "audio probe +19.5 [+13.1, +25.9] points, n=2.")


def test_every_trained_row_is_measured_against_the_raw_input_and_its_initial_weights():
    from experiments.suite_eval import FLOOR_ENCODER, FLOOR_METHOD, FLOOR_STRATEGY

    seeds = (1, 2, 3)

    def row(method, encoder, strategy, image):
        return Row(method, encoder, strategy, per_seed={s: {"knn-image": v} for s, v in zip(seeds, image)}, **COST)
    table = [
        row("FSSUAVL", "resnet18_cifar", "fedavg", (.80, .82, .81)),
        row("FSSUAVL", "vit_tiny_cifar", "fedavg", (.60, .62, .61)),
        row("Centralized", "resnet18_cifar", "- (fedavg budget)", (.90, .91, .93)),
        row(UNTRAINED_METHOD, "resnet18_cifar", UNTRAINED_STRATEGY, (.70, .71, .70)),
        row(FLOOR_METHOD, FLOOR_ENCODER, FLOOR_STRATEGY, (.97, .97, .96)),
    ]
    lines = R.reference_lines(table, [])
    body = [line for line in lines[2:]]
    # every trained row against the floor; the ViT has no untrained row of its own encoder here
    assert [line.split(" | ")[:4] for line in body] == [
        ["| FSSUAVL", "resnet18_cifar", "fedavg", "raw input"], ["| FSSUAVL", "resnet18_cifar", "fedavg",
                                                               "initial weights"],
        ["| FSSUAVL", "vit_tiny_cifar", "fedavg", "raw input"],
        ["| Centralized", "resnet18_cifar", "- (fedavg budget)", "raw input"],
        ["| Centralized", "resnet18_cifar", "- (fedavg budget)", "initial weights"]]
    assert "| **-15.7 [-18.5, -12.8]** below |" in body[0]  # clearly below the raw input
    assert "| +10.7 [+9.2, +12.1] |" in body[1] and "below" not in body[1]
    # the floor is a baseline of the FSSUAVL rows of every encoder of the setting
    assert R.references(table, table[4]) == [0, 1] and R.references(table, table[3]) == [0]


def test_real_out_of_domain_set_must_be_present_under_the_data_root(tmp_path):
    text = (f"defaults: {{data-root: '{tmp_path}'}}\nevaluation: {{out-of-domain: [cifar10]}}\n"
            "entries:\n  - {method: fssuavl}\n")
    message = error_of(text)
    assert "evaluation.out-of-domain: cifar10" in message


def test_a_finished_suites_rows_are_read_back_and_measured_against_a_floor():
    import json
    from dataclasses import asdict

    from experiments.suite_eval import FLOOR_ENCODER, FLOOR_METHOD, FLOOR_STRATEGY
    from experiments.suite_references import report, stored_rows

    suite = P.parse_suite(MINIMAL + "seeds: [1, 2]\n", "s.yaml")
    trained = Row("FSSUAVL", "resnet18_cifar", "fedavg", per_seed={1: {"knn-image": .80}, 2: {"knn-image": .82}},
                  **COST)
    results = json.loads(json.dumps({"rows": [asdict(trained)]}))  # seeds become strings, as in results.json
    rows = stored_rows(results)
    assert rows[0].values("knn-image") == {1: .80, 2: .82} and rows[0].params == COST["params"]
    floor = Row(FLOOR_METHOD, FLOOR_ENCODER, FLOOR_STRATEGY, per_seed={1: {"knn-image": .97}, 2: {"knn-image": .96}})
    text = "\n".join(report(suite, rows, [floor]))
    assert "| Raw input (floor) | - | n/a | 96.5 ± 0.7 (n=2) |" in text
    assert "| FSSUAVL | resnet18_cifar | fedavg | raw input | n/a | -15.5 [-34.6, +3.6] |" in text  # 2 seeds: wide
