"""Whole runs through the real Flower runtime: `flwr run`, local SuperLink, Ray backend."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app_config.run_config import RunConfig
from experiments.common import superlink_pids
from models.ssl_model import SSLModel
from tests.conftest import PROJECT

pytestmark = pytest.mark.integration  # starts processes: Flower's runtime, Ray, deployments

PORTS = ["--superlink-port", "39291", "--control-port", "39293"]


def launch(tmp_path: Path, run_config: str, supernodes: int) -> subprocess.CompletedProcess:
    flwr_home = tmp_path / "flwr"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.launch", "--num-supernodes", str(supernodes),
         "--flwr-home", str(flwr_home), *PORTS, "--timeout", "900", "--run-config", run_config],
        cwd=PROJECT, capture_output=True, text=True, timeout=1000,
    )
    assert superlink_pids(flwr_home) == []  # the launcher always stops its SuperLink
    return done


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root):
    tmp_path = tmp_path_factory.mktemp("e2e")
    runs = tmp_path / "runs"
    config = (f"strategy='ldawa' ldawa-warmup-rounds=1 num-server-rounds=2 max-local-steps=2 batch-size=16 eval-every=1 "
              f"data-root='{data_root}' run-dir='{runs}'")
    done = launch(tmp_path, config, supernodes=5)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (folder,) = runs.iterdir()
    return done, folder


def test_run_completes_and_records_every_round(finished_run):
    done, folder = finished_run
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:
        assert 0.0 <= r["eval"]["knn-image"] <= 1.0 and 0.0 <= r["eval"]["knn-audio"] <= 1.0
    for r in records[1:]:
        train = r["train"]
        # 5 clients at 0.4/0.3/0.3: two visual-only, two audio-only, one audio-visual
        assert train["clients"] == 5 and train["clients-image"] == 3 and train["clients-audio"] == 3
        assert train["loss-image"] > 0 and train["loss-audio"] > 0
        assert r["failures"] == 0
    assert 0.0 < records[2]["train"]["ldawa-delta-mean"] <= 1.0  # L-DAWA after its one warm-up round
    # the server's schedule: warm-up round 1 at half the recipe's rate (SGD 0.1), then cosine from the full rate
    assert [r["train"]["learning-rate"] for r in records[1:]] == pytest.approx([0.05, 0.1])
    assert "[fssuavl] round   2" in done.stdout


def test_final_model_is_a_loadable_encoder(finished_run):
    _, folder = finished_run
    state = torch.load(folder / "final_model.pt", weights_only=True)
    model = SSLModel(RunConfig().encoder, 512, 128)
    model.load_state_dict(state)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 2 and "final-knn-audio" in summary


def test_failed_server_app_gives_nonzero_exit(tmp_path, data_root):
    done = launch(tmp_path, f"device='cuda:7' data-root='{data_root}' run-dir='{tmp_path / 'runs'}'", supernodes=2)
    assert done.returncode == 1
    assert "ended as" in done.stderr


def test_a_thousand_supernodes_train_on_the_embedded_data(tmp_path, data_root):
    """The scale path end to end: 1,000 virtual clients (resample partitioner), 4 sampled per round."""
    runs = tmp_path / "runs"
    config = ("partitioner='resample' fraction-train=0.004 num-server-rounds=2 max-local-steps=1 batch-size=4 "
              "eval-every=0 eval-train-samples=100 tensorboard=false checkpoint-every=0 "
              f"data-root='{data_root}' run-dir='{runs}'")
    done = launch(tmp_path, config, supernodes=1000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (folder,) = runs.iterdir()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert (r["sent"], r["replies"], r["failures"], r["aggregated"]) == (4, 4, 0, True)
        # Flower gives the 1,000 nodes random ids, so the 4 sampled may all hold one modality (about 5 % of
        # runs): a round reports only the losses of the modalities it trained.
        losses = [r["train"][key] for key in ("loss-image", "loss-audio") if key in r["train"]]
        assert r["train"]["clients"] == 4 and losses and sum(losses) > 0
    assert records[2]["eval"]["eval-train-samples-image"] == 100


def test_a_launcher_stopped_mid_round_leaves_no_process_of_its_run(tmp_path, small_root):
    """SIGTERM to the launcher (as `timeout` sends it) stops the SuperLink, flwr-simulation and Ray."""
    import signal
    import time

    from experiments.common import flower_home_pids

    flwr_home = (tmp_path / "flwr").resolve()
    config = (f"encoder='test_resnet' projection-hidden-dim=64 projection-dim=32 num-server-rounds=50 "
              f"max-local-steps=2 data-root='{small_root}' run-dir='{tmp_path / 'runs'}'")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "experiments.launch", "--num-supernodes", "3", "--flwr-home", str(flwr_home),
         *PORTS, "--timeout", "900", "--run-config", config],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in launcher.stdout:
            if "[fssuavl] round   1" in line:
                break
        assert flower_home_pids(flwr_home), "the run's processes carry its FLWR_HOME"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) != 0
        deadline = time.monotonic() + 30
        while flower_home_pids(flwr_home) and time.monotonic() < deadline:
            time.sleep(1)
        assert flower_home_pids(flwr_home) == [] and superlink_pids(flwr_home) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
        subprocess.run([sys.executable, "-m", "experiments.launch", "--stop", "--flwr-home", str(flwr_home)],
                       cwd=PROJECT, capture_output=True, timeout=120)


def small_run(tmp_path: Path, small_root: Path, overrides: str) -> tuple[Path, list[dict]]:
    """A 2-round run of the tiny CNN on 3 SuperNodes with ``overrides``: its folder and metrics records."""
    runs = tmp_path / "runs"
    config = (f"encoder='test_resnet' projection-hidden-dim=64 projection-dim=32 num-server-rounds=2 "
              f"max-local-steps=2 tensorboard=false {overrides} data-root='{small_root}' run-dir='{runs}'")
    done = launch(tmp_path, config, supernodes=3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (folder,) = runs.iterdir()
    return folder, [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_fedvssl_clients_keep_their_own_head_between_rounds(tmp_path, small_root):
    """FedVSSL through the real runtime: the node context keeps each client's head, SWA from round 2."""
    _, records = small_run(tmp_path, small_root, "strategy='fedvssl' eval-every=2")
    first, second = records[1]["train"], records[2]["train"]
    assert first["own-head"] == 0.0 and second["own-head"] == pytest.approx(1.0)  # every client, round 2
    assert first["fedvssl-swa"] == 0 and second["fedvssl-swa"] == 1


def test_fassl_sends_only_the_encoder_selects_per_task_and_trains_barlow_twins(tmp_path, small_root):
    """FASSL's three parts through the real runtime: the head's bytes never travel, the best model per task is
    kept with its round, and Barlow Twins is the objective."""
    from flwr.app import ArrayRecord

    from client_app.resources import record_bytes

    folder, records = small_run(tmp_path, small_root, "eval-every=1 send-encoder-only=true keep-best-models=true "
                                                      "ssl-objective='barlow-twins'")
    model = SSLModel("test_resnet", 64, 32)
    whole = record_bytes(ArrayRecord(model.state_dict()))
    encoder = record_bytes(ArrayRecord({k: v for k, v in model.state_dict().items() if not k.startswith("projector.")}))
    for r in records[1:]:
        assert r["bytes-sent"] == r["sent"] * encoder < r["sent"] * whole
        assert r["train"]["own-head"] == (0.0 if r["round"] == 1 else pytest.approx(1.0))
        assert r["train"]["loss-image"] > 0 and r["train"]["loss-audio"] > 0
    summary = json.loads((folder / "summary.json").read_text())
    selected = summary["selected-models"]
    assert set(selected) == {"knn-image", "knn-audio", "probe-image", "probe-audio"}
    for task, entry in selected.items():
        assert entry["round"] in (1, 2) and "labelled" in entry["selection"]
        SSLModel("test_resnet", 64, 32).load_state_dict(torch.load(folder / f"best-{task}.pt"))
    SSLModel("test_resnet", 64, 32).load_state_dict(torch.load(folder / "final_model.pt"))


def test_a_packed_float16_run_trains_through_the_real_runtime(tmp_path, small_root):
    """wire-format='packed' with update-dtype='float16': three objects per model each way, the same checks."""
    _, records = small_run(tmp_path, small_root, "eval-every=2 wire-format='packed' update-dtype='float16'")
    for r in records[1:]:
        assert r["aggregated"] and r["train"]["replies-aggregated"] == 3 and r["failures"] == 0
        assert r["train"]["replies-dropped-shape"] == 0 and r["train"]["replies-dropped-dtype"] == 0
    model = SSLModel("test_resnet", 64, 32)
    whole = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert records[1]["bytes-sent"] < 0.6 * records[1]["sent"] * whole  # float16, packed
    assert records[2]["eval"]["knn-image"] > 0


def test_creamfl_trains_through_flwr_run(tmp_path, data_root):
    """CreamFL end to end: 3 clients (visual, audio, audio-visual), 2 rounds, representations on the wire."""
    runs = tmp_path / "runs"
    config = ("strategy='creamfl' creamfl-public-size=32 num-server-rounds=2 max-local-steps=2 batch-size=8 "
              "eval-every=1 frac-visual-clients=0.34 frac-audio-clients=0.33 frac-audiovisual-clients=0.33 "
              f"min-train-nodes=3 data-root='{data_root}' run-dir='{runs}'")
    done = launch(tmp_path, config, supernodes=3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (folder,) = runs.iterdir()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        train = r["train"]
        assert r["failures"] == 0 and train["replies-aggregated"] == 3 and train["aggregation-skipped"] == 0
        assert train["loss-image"] > 0 and train["loss-audio"] > 0 and train["server-distill-loss"] >= 0
        # 3 x (2 banks of 32 x 128 float32 + 2 x 32 int64 indices, with npy headers) down: no weights
        assert 3 * (2 * 32 * 128 * 4 + 2 * 32 * 8) < r["bytes-sent"] < 3 * (2 * 32 * 128 * 4 + 2 * 32 * 8 + 4 * 256)
    torch.manual_seed(RunConfig().seed)
    initial = SSLModel(RunConfig().encoder, 512, 128)
    final = torch.load(folder / "final_model.pt", weights_only=True)
    assert any(not torch.equal(final[k], v) for k, v in initial.state_dict().items() if v.is_floating_point())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == 2 and "final-knn-image" in summary
