"""The paper and low-data suites: their job lists, and --dry-run against data roots in the real layouts."""

from __future__ import annotations

import pytest
import torch
import yaml

from data_partition.datasets import resolve_data_root
from experiments import suite as S
from experiments.suite_eval import empty_row
from experiments.suite_plan import all_jobs, load_suite, parse_suite
from experiments.suite_report import references
from experiments.suite_spec import SuiteError
from tests.conftest import PROJECT
from tests.make_fixture_root import WRITERS

SUITES = PROJECT / "experiments" / "suites"
PAPER_DATASETS = ("cifar10", "cifar100", "tiny-imagenet", "speech-commands", "esc50", "vggsound")


def fixture_root(folder, datasets=PAPER_DATASETS):
    """A data root with every dataset the paper suite reads, in miniature (standard layouts)."""
    for name in datasets:
        WRITERS[name](folder, 1, False)
    return folder


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    return fixture_root(tmp_path_factory.mktemp("paper-root"))


def test_paper_suite_dry_run_validates_every_job_against_the_data_root(paper_root, monkeypatch, capsys):
    monkeypatch.setenv("FSSUAVL_DATA_ROOT", str(paper_root))
    assert S.main([str(SUITES / "paper.yaml"), "--dry-run"]) == 0
    assert "102 training jobs" in capsys.readouterr().out
    suite = load_suite(SUITES / "paper.yaml")
    assert suite.seeds == [0, 1, 2] and suite.runner.num_supernodes == 100
    jobs = all_jobs(suite)
    configs = {job.id: job.config() for job in jobs}  # each full run config validates, layouts included
    assert len(jobs) == 102
    for seed in (0, 1, 2):
        mine = [j for j in jobs if j.seed == seed]
        roles = sorted(j.role for j in mine)
        assert roles == sorted(["fssuavl"] * 14 + ["fvssl"] * 8 + ["fassl"] * 8 + ["centralized"] * 4)
    assert {(j.role, j.num_supernodes) for j in jobs} == {("fssuavl", 100), ("fvssl", 70), ("fassl", 60),
                                                          ("centralized", 100)}
    assert {configs[j.id].strategy for j in jobs} == {"fedavg", "ldawa", "fedvssl", "modality-wise", "creamfl"}
    creamfl = [configs[j.id] for j in jobs if configs[j.id].strategy == "creamfl"]
    assert len(creamfl) == 3 and {c.creamfl_public_size for c in creamfl} == {5000}
    related = [configs[j.id] for j in jobs if configs[j.id].strategy == "fedvssl" or configs[j.id].send_encoder_only]
    assert len(related) == 12 and {c.ssl_objective for c in related} == {"nt-xent", "barlow-twins"}
    mirror = [configs[j.id] for j in jobs if configs[j.id].strategy == "modality-wise"]
    assert len(mirror) == 3 and {(c.encoder_layout, c.mirror_phase1_rounds) for c in mirror} == {("per-modality", 80)}
    assert {configs[j.id].encoder for j in jobs} == {"resnet18_cifar", "vit_tiny_cifar"}
    assert {configs[j.id].strategy for j in jobs if j.kind == "centralized"} == {"fedavg"}
    pairs = {(c.image_dataset or "-", c.audio_dataset or "-", c.image_size, c.audio_hop_ms) for c in configs.values()}
    assert pairs == {("cifar10", "speech-commands", 32, 10.0), ("tiny-imagenet", "vggsound-audio", 64, 20.0),
                     ("cifar10", "-", 32, 10.0), ("-", "speech-commands", 32, 10.0),
                     ("tiny-imagenet", "-", 64, 20.0), ("-", "vggsound-audio", 64, 20.0)}
    for config in configs.values():
        assert config.fraction_train == 0.1 and config.num_server_rounds == 100 and config.audio_n_mels == 64
        assert resolve_data_root(config.data_root) == paper_root.resolve() and config.save_every == 100
        assert (config.optimizer == "adamw") == (config.encoder == "vit_tiny_cifar")
    ev = suite.evaluation
    assert ev.out_of_domain == ["cifar100", "esc50"]
    assert (ev.fusion_image_dataset, ev.fusion_audio_dataset) == ("vggsound-frames", "vggsound-audio")


@pytest.mark.parametrize("missing, words", [
    ("esc50", "evaluation.out-of-domain: esc50: data-root"),
    ("cifar100", "evaluation.out-of-domain: cifar100: data-root"),
    ("vggsound", "audio-dataset='vggsound-audio': data-root"),
    ("speech-commands", "audio-dataset='speech-commands': data-root"),
])
def test_paper_suite_dry_run_names_a_missing_dataset_in_one_line(tmp_path, monkeypatch, capsys, missing, words):
    root = fixture_root(tmp_path, [d for d in PAPER_DATASETS if d != missing])
    monkeypatch.setenv("FSSUAVL_DATA_ROOT", str(root))
    assert S.main([str(SUITES / "paper.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err and str(root) in err


def test_fusion_sets_are_checked_like_the_others(paper_root):
    text = f"defaults: {{data-root: '{paper_root}'}}\nevaluation: {{fusion-audio-dataset: vggsound-frames}}\n" \
           "entries: [{method: fssuavl}]\n"
    with pytest.raises(SuiteError, match="evaluation.fusion-audio-dataset: unknown value 'vggsound-frames'"):
        parse_suite(text, "s.yaml")


def test_lowdata_suite_pairs_each_share_with_its_single_modality_reference():
    suite = load_suite(SUITES / "lowdata.yaml")
    assert suite.seeds == [0, 1, 2] and len(all_jobs(suite)) == 3 * 11  # FSSUAVL 5, FVSSL 3, FASSL 3
    rows = [empty_row(e) for e in suite.entries]
    for i, row in enumerate(rows):
        if not row.ours:
            (ref,) = references(rows, row)  # the FSSUAVL row with the same share
            assert rows[ref].setting == row.setting and row.setting.split("=")[0] in ("visual-data-share",
                                                                                      "audio-data-share")
    raw = yaml.safe_load((SUITES / "lowdata.yaml").read_text())
    budget = ("num-server-rounds", "max-local-steps")
    assert all(k in raw["defaults"] for k in budget)
    assert not any(k in (e.get("overrides") or {}) or k in (e.get("sweep") or {})
                   for e in raw["entries"] for k in budget)


def test_vit_takes_spectrograms_whose_sides_are_not_multiples_of_its_patch():
    from app_config.run_config import RunConfig
    from models.factory import build_model

    model = build_model(RunConfig(encoder="vit_tiny_cifar", projection_hidden_dim=16, projection_dim=8)).eval()
    with torch.no_grad():  # 1 s at a 10 ms hop: 101 frames; VGGSound at 20 ms: 501
        for frames in (101, 501):
            assert model.features(torch.zeros(1, 3, 64, frames)).shape == (1, 192)


def test_fusion_uses_the_named_sets_even_without_in_domain_sets(data_root):
    from app_config.run_config import RunConfig
    from experiments.frozen_eval import Encoder, EvalSettings, evaluate
    from models.factory import build_model

    config = RunConfig(encoder="test_resnet", projection_hidden_dim=16, projection_dim=8, data_root=str(data_root))
    torch.manual_seed(0)
    encoder = Encoder(config, build_model(config).eval(), key="fusion-test")
    common = dict(knn_k=5, max_train_samples=100, max_test_samples=50, image_dataset="", audio_dataset="")
    named = evaluate(encoder, encoder, EvalSettings(fusion_image_dataset="digits",
                                                    fusion_audio_dataset="spoken-digits", **common))
    assert "probe-image" not in named and "probe-audio" not in named  # no in-domain sets ...
    assert named["fusion-pairs"] == 50 and 0 <= named["fusion-probe"] <= 1  # ... fusion on the named ones
    assert "fusion-probe" not in evaluate(encoder, encoder, EvalSettings(**common))
