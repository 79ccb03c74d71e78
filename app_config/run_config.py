"""Every run-config key, its type, default and meaning: the one place they are documented.

``pyproject.toml`` ``[tool.flwr.app.config]`` repeats the defaults (Flower reads
them from there); a test keeps both in step. Override any key with
``flwr run . --run-config "key=value ..."`` or a TOML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path


class ConfigError(ValueError):
    """A run-config value that cannot work; the message names the key and the fix."""


def _key(default, doc: str, number_or_auto: bool = False):
    """``number_or_auto``: a float key that also takes the string "auto" (resolved from the encoder's recipe)."""
    return field(default=default, metadata={"doc": doc, "number_or_auto": number_or_auto})


@dataclass(frozen=True)
class RunConfig:
    # --- federation -------------------------------------------------------
    num_server_rounds: int = _key(6, "Federated rounds to run.")
    strategy: str = _key("fedavg", "Aggregation strategy name (see strategies.registry.STRATEGIES).")
    ldawa_warmup_rounds: int = _key(3, "L-DAWA: first rounds aggregated with data-size FedAvg (the reference, "
                                       "yasar-rehman/L-DAWA main_CIFAR10_LDAWA.py, uses FedAvg in rounds 1-3 and "
                                       "L-DAWA from round 4); 0 = L-DAWA from round 1.")
    fraction_train: float = _key(1.0, "Fraction of connected clients sampled each round for training.")
    fraction_evaluate: float = _key(0.0, "Fraction sampled for client-side SSL-loss evaluation (0 = off).")
    min_train_nodes: int = _key(2, "Least clients a training round waits for.")
    # --- strategy parameters --- (read by strategies.registry; each strategy takes only its own)
    proximal_mu: float = _key(0.01, "fedprox: weight mu of the clients' proximal term (mu/2)*||w - w_global||^2; "
                                    "sent to clients as 'proximal-mu' (0 = FedAvg).")
    server_learning_rate: float = _key(1.0, "fedavgm: server learning rate applied to the momentum pseudo-gradient.")
    server_momentum: float = _key(0.9, "fedavgm: server momentum in [0, 1) (0 with server-learning-rate 1 = FedAvg).")
    fedopt_eta: float = _key(0.01, "fedadam, fedyogi, fedadagrad: server learning rate eta.")
    fedopt_beta1: float = _key(0.9, "fedadam, fedyogi: first-moment decay beta_1 in [0, 1).")
    fedopt_beta2: float = _key(0.99, "fedadam, fedyogi: second-moment decay beta_2 in [0, 1).")
    fedopt_tau: float = _key(0.001, "fedadam, fedyogi, fedadagrad: adaptivity tau > 0 (added to sqrt(v)).")
    trimmed_beta: float = _key(0.2, "fedtrimmedavg: fraction in [0, 0.5) cut from each tail per coordinate.")
    ldawa_weighting: bool = _key(False, "ldawa: weight clients by data size instead of the reference's uniform mean.")
    ldawa_normalise: bool = _key(False, "ldawa: divide by the sum of the deltas instead of the number of clients "
                                        "(not in the reference).")
    num_malicious_nodes: int = _key(0, "krum, multikrum, bulyan: number f of Byzantine clients to tolerate "
                                       "(bulyan needs at least 4f + 3 good replies a round).")
    multikrum_select: int = _key(2, "multikrum: replies with the best Krum scores averaged each round.")
    weight_cap_factor: float = _key(4.0, "No reply weighs more than this many times the round's lower-median "
                                         "num-examples (0 = off; otherwise >= 1).")
    dp: str = _key("none", "Differential privacy around the strategy: none, server-fixed, client-fixed, "
                           "server-adaptive or client-adaptive (Flower's wrappers; the client modes clip on the "
                           "ClientApp with client_app.dp_clipping).")
    dp_noise_multiplier: float = _key(1.0, "dp: noise multiplier sigma; the aggregate gets Gaussian noise of std "
                                           "sigma * C / m.")
    dp_clipping_norm: float = _key(1.0, "dp: L2 norm C each update is clipped to (adaptive modes: the initial norm).")
    dp_sampled_clients: int = _key(0, "dp: clients m the noise is calibrated for (0 = min-train-nodes).")
    dp_target_quantile: float = _key(0.5, "dp adaptive modes: fraction of updates that should be clipped.")
    dp_clip_norm_lr: float = _key(0.2, "dp adaptive modes: learning rate of the clipping norm's geometric update.")
    dp_clipped_count_stddev: float = _key(0.0, "dp adaptive modes: std of the noise on the count of clipped updates "
                                               "(0 = sampled clients / 20; must exceed dp-noise-multiplier / 2).")
    # --- end of strategy parameters ---
    # --- model ------------------------------------------------------------
    encoder: str = _key("resnet18_half_cifar", "timm model name: resnet18_half_cifar (ResNet-18 at half width, "
                                                "the CPU default), resnet18_cifar, vit_tiny_cifar or any timm model.")
    projection_hidden_dim: int = _key(512, "Hidden width of the SimCLR projection MLP.")
    projection_dim: int = _key(128, "Output width of the projection MLP (NT-Xent space).")
    # --- data -------------------------------------------------------------
    image_dataset: str = _key("digits", "Image dataset name; '' for none.")
    audio_dataset: str = _key("spoken-digits", "Audio dataset name; '' for none.")
    data_root: str = _key("", "Folder with datasets and caches; '' = $FSSUAVL_DATA_ROOT or ~/.cache/fssuavl.")
    image_size: int = _key(16, "Side (px) of image crops fed to the encoder.")
    image_min_crop_scale: float = _key(0.5, "Smallest area share of a random resized crop (SimCLR on CIFAR: 0.08-0.2; "
                                            "0.5 keeps small digits legible).")
    image_hflip: bool = _key(False, "Random horizontal flips (SimCLR default on; off for orientation-bound digits).")
    audio_n_mels: int = _key(32, "Mel bands of the log-mel spectrogram.")
    audio_hop_ms: float = _key(32.0, "Spectrogram hop in ms (1 s clip -> 1000/hop frames).")
    audio_win_ms: float = _key(64.0, "Spectrogram window in ms.")
    # --- partition --------------------------------------------------------
    partitioner: str = _key("dirichlet", "'iid', 'dirichlet' (label skew) or 'pathological' (k classes per client).")
    dirichlet_alpha: float = _key(0.5, "Dirichlet concentration; smaller = more label skew.")
    min_partition_size: int = _key(2, "Least samples per client and held modality.")
    classes_per_client: int = _key(2, "pathological: classes each client holds (client i always has class i mod C).")
    frac_visual_clients: float = _key(0.4, "Fraction of clients holding only images.")
    frac_audio_clients: float = _key(0.3, "Fraction of clients holding only audio.")
    frac_audiovisual_clients: float = _key(0.3, "Fraction holding both (unpaired); the three sum to 1.")
    visual_data_share: float = _key(1.0, "Share (0-1] of its image part a client keeps.")
    audio_data_share: float = _key(1.0, "Share (0-1] of its audio part a client keeps.")
    # --- local training ---------------------------------------------------
    local_epochs: int = _key(1, "Local epochs per round (over the client's larger modality).")
    max_local_steps: int = _key(0, "Cap on local steps per round; 0 = no cap.")
    batch_size: int = _key(16, "Samples per modality per step (16: twice the local steps of 32 for about 1.25x the time on a CPU; raise it on a GPU).")
    optimizer: str = _key("auto", "'auto' (the encoder family's recipe: SGD for convnets, AdamW for vision "
                                  "transformers; models/recipes.py), 'sgd' (momentum) or 'adamw'.")
    learning_rate: float | str = _key("auto", "Base local learning rate, or 'auto' (convnets 0.1, transformers "
                                              "1e-3); each round's rate follows lr-schedule.", number_or_auto=True)
    lr_schedule: str = _key("cosine", "Learning rate across rounds, sent by the server each round: 'cosine' "
                                      "(decay after the warm-up) or 'constant'.")
    lr_warmup_rounds: int = _key(1, "Rounds of linear learning-rate warm-up before the schedule (0 = none).")
    momentum: float = _key(0.9, "SGD momentum.")
    weight_decay: float | str = _key("auto", "Weight decay, or 'auto' (convnets 5e-4, transformers 0.05).",
                                     number_or_auto=True)
    temperature: float = _key(0.2, "NT-Xent temperature.")
    # --- evaluation and output -------------------------------------------
    eval_every: int = _key(3, "Central kNN/linear-probe evaluation every k rounds (round 0 and the last always).")
    save_every: int = _key(0, "Also save the global model every k rounds (and round 0) as round-NNNN.pt; 0 = final only.")
    knn_k: int = _key(10, "Neighbours for kNN accuracy.")
    seed: int = _key(42, "Seed of partitions, initial weights and local training.")
    run_dir: str = _key("runs", "Where each run's folder (metrics, model) is written; relative = to the working dir.")
    tensorboard: bool = _key(True, "Also write per-round scalars as TensorBoard event files to <run folder>/tensorboard/.")
    device: str = _key("auto", "'auto' (CUDA when present), 'cpu' or 'cuda[:i]'.")
    # --- reliability ------------------------------------------------------
    checkpoint_every: int = _key(1, "Write a resumable checkpoint (<run folder>/checkpoint.pt: global model, round, "
                                    "strategy state, RNG states, metrics history) every k rounds; 0 = never.")
    resume_from: str = _key("", "Continue a run from a checkpoint: its run folder or checkpoint file; '' = fresh run. "
                                "Rounds resume at the checkpoint's round + 1 in the checkpoint's run folder.")
    round_timeout: float = _key(3600.0, "Seconds the server waits for a round's replies; clients answering later "
                                        "count as failures and the round aggregates the replies it has.")
    deterministic: bool = _key(False, "torch.use_deterministic_algorithms(True, warn_only=True) on server and "
                                      "clients (bitwise-reproducible CPU runs).")
    fault_rate: float = _key(0.0, "Tests/experiments only: probability that a client's train call fails, decided by "
                                  "a hash of (seed, round, partition) so the failing clients are known in advance.")
    fault_mode: str = _key("raise", "How an injected fault fails: 'raise' (the ClientApp raises) or 'hang' (the "
                                    "client sleeps past round-timeout, then raises).")

    # ------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, object]:
        """Config-key spelling (hyphens) -> default."""
        return {f.name.replace("_", "-"): f.default for f in fields(cls)}

    @classmethod
    def from_mapping(cls, values: dict) -> "RunConfig":
        """Build from a Flower run config; unknown keys and wrong types are errors."""
        by_key = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(values) - set(by_key))
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(sorted(by_key))} (documented in app_config/run_config.py)")
        kwargs = {}
        for key, value in values.items():
            f = by_key[key]
            if f.metadata["number_or_auto"]:
                if value != "auto" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ConfigError(f"{key}: expected a number or 'auto', got {value!r}")
                kwargs[f.name] = value if value == "auto" else float(value)
                continue
            expected = type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
            kwargs[f.name] = value
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        from data_partition.datasets import DATASETS, dataset_names, layout_problem
        from data_partition.partition import PARTITIONERS
        from strategies.registry import STRATEGIES

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.strategy in STRATEGIES,
             f"strategy: unknown value {self.strategy!r}; valid: {', '.join(sorted(STRATEGIES))}")
        need(self.num_server_rounds >= 1, "num-server-rounds: must be >= 1")
        need(self.ldawa_warmup_rounds >= 0, "ldawa-warmup-rounds: must be >= 0")
        need(0.0 < self.fraction_train <= 1.0, "fraction-train: must be in (0, 1]")
        need(0.0 <= self.fraction_evaluate <= 1.0, "fraction-evaluate: must be in [0, 1]")
        need(self.min_train_nodes >= 1, "min-train-nodes: must be >= 1")
        # --- strategy parameters ---
        need(self.proximal_mu >= 0, "proximal-mu: must be >= 0")
        need(self.server_learning_rate > 0, "server-learning-rate: must be > 0")
        need(0 <= self.server_momentum < 1, "server-momentum: must be in [0, 1)")
        need(self.fedopt_eta > 0, "fedopt-eta: must be > 0")
        need(0 <= self.fedopt_beta1 < 1, "fedopt-beta1: must be in [0, 1)")
        need(0 <= self.fedopt_beta2 < 1, "fedopt-beta2: must be in [0, 1)")
        need(self.fedopt_tau > 0, "fedopt-tau: must be > 0")
        need(0 <= self.trimmed_beta < 0.5, "trimmed-beta: must be in [0, 0.5)")
        need(self.num_malicious_nodes >= 0, "num-malicious-nodes: must be >= 0")
        need(self.multikrum_select >= 1, "multikrum-select: must be >= 1")
        need(self.weight_cap_factor == 0 or self.weight_cap_factor >= 1,
             "weight-cap-factor: must be 0 (off) or >= 1")
        from strategies.dp import DPSettings

        try:
            DPSettings.from_config(self).check()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        # --- end of strategy parameters ---
        fracs = (self.frac_visual_clients, self.frac_audio_clients, self.frac_audiovisual_clients)
        need(all(f >= 0 for f in fracs) and abs(sum(fracs) - 1.0) < 1e-6,
             "frac-visual-clients + frac-audio-clients + frac-audiovisual-clients: must be >= 0 and sum to 1 "
             f"(got {sum(fracs):g})")
        for key, share in (("visual-data-share", self.visual_data_share), ("audio-data-share", self.audio_data_share)):
            need(0.0 < share <= 1.0, f"{key}: must be in (0, 1]")
        wants_image = self.frac_visual_clients + self.frac_audiovisual_clients > 0
        wants_audio = self.frac_audio_clients + self.frac_audiovisual_clients > 0
        for key, name, modality, wanted in (("image-dataset", self.image_dataset, "image", wants_image),
                                            ("audio-dataset", self.audio_dataset, "audio", wants_audio)):
            if name or wanted:
                need(name in DATASETS and DATASETS[name].modality == modality,
                     f"{key}: unknown value {name!r}; valid: {', '.join(dataset_names(modality))}")
                if DATASETS[name].needs_source:  # real dataset: its files must be laid out under data-root
                    problem = layout_problem(name, self.resolved_data_root())
                    need(problem is None, f"{key}={name!r}: {problem}")
        need(self.partitioner in PARTITIONERS,
             f"partitioner: unknown value {self.partitioner!r}; valid: {', '.join(PARTITIONERS)}")
        need(self.classes_per_client >= 1, "classes-per-client: must be >= 1")
        need(self.dirichlet_alpha > 0, "dirichlet-alpha: must be > 0")
        need(self.min_partition_size >= 0, "min-partition-size: must be >= 0")
        need(self.local_epochs >= 1, "local-epochs: must be >= 1")
        need(self.max_local_steps >= 0, "max-local-steps: must be >= 0 (0 = no cap)")
        need(self.batch_size >= 2, "batch-size: must be >= 2 (NT-Xent needs negatives)")
        need(self.optimizer in ("auto", "sgd", "adamw"),
             f"optimizer: unknown value {self.optimizer!r}; valid: auto, sgd, adamw")
        need(self.learning_rate == "auto" or self.learning_rate > 0, "learning-rate: must be > 0 or 'auto'")
        need(self.weight_decay == "auto" or self.weight_decay >= 0, "weight-decay: must be >= 0 or 'auto'")
        need(self.lr_schedule in ("cosine", "constant"),
             f"lr-schedule: unknown value {self.lr_schedule!r}; valid: cosine, constant")
        need(self.lr_warmup_rounds >= 0, "lr-warmup-rounds: must be >= 0")
        need(self.temperature > 0, "temperature: must be > 0")
        need(self.image_size >= 8, "image-size: must be >= 8")
        need(0.0 < self.image_min_crop_scale <= 1.0, "image-min-crop-scale: must be in (0, 1]")
        need(self.audio_n_mels >= 8, "audio-n-mels: must be >= 8")
        need(0 < self.audio_hop_ms <= self.audio_win_ms, "audio-hop-ms: must be > 0 and <= audio-win-ms")
        need(self.eval_every >= 0, "eval-every: must be >= 0 (0 = only first and last round)")
        need(self.knn_k >= 1, "knn-k: must be >= 1")
        need(self.save_every >= 0, "save-every: must be >= 0 (0 = final model only)")
        # --- reliability ---
        need(self.checkpoint_every >= 0, "checkpoint-every: must be >= 0 (0 = no checkpoints)")
        if self.resume_from:
            from server_app.checkpoint import resume_problem

            problem = resume_problem(self.resume_from)
            need(problem is None, f"resume-from: {problem}")
        need(self.round_timeout > 0, "round-timeout: must be > 0 (seconds)")
        need(0.0 <= self.fault_rate <= 1.0, "fault-rate: must be in [0, 1]")
        need(self.fault_mode in ("raise", "hang"), f"fault-mode: unknown value {self.fault_mode!r}; valid: raise, hang")
        # --- end of reliability ---
        from models.encoders import is_encoder_name

        need(is_encoder_name(self.encoder), f"encoder: unknown value {self.encoder!r}; use resnet18_half_cifar, "
                                            "resnet18_cifar, vit_tiny_cifar or a timm model name")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device: unknown value {self.device!r}; valid: auto, cpu, cuda, cuda:N")
        if self.data_root:
            need(Path(self.data_root).expanduser().is_dir(),
                 f"data-root: folder {self.data_root!r} does not exist; create it, fix the path, "
                 "or set data-root='' for the default cache")

    # ------------------------------------------------------------------
    def resolved_data_root(self) -> Path:
        import os

        if self.data_root:
            return Path(self.data_root).expanduser().resolve()
        env = os.environ.get("FSSUAVL_DATA_ROOT")
        root = Path(env).expanduser() if env else Path.home() / ".cache" / "fssuavl"
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve()


def docs_table() -> str:
    """Markdown table of every key (used by the README)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in fields(RunConfig):
        rows.append(f"| `{f.name.replace('_', '-')}` | `{f.default!r}` | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(docs_table())
