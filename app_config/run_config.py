"""Every run-config key, its type, default, bounds and meaning: the one place they are written.

``RunConfig`` is a frozen pydantic dataclass: the config keys are its fields'
hyphenated aliases, choices are ``Literal`` types and ranges are field bounds,
so an invalid RunConfig cannot be built (every value is checked on
construction, also by ``dataclasses.replace``). Problems are raised as
:class:`ConfigError`, one line naming the key. This module imports nothing
else of the project and touches no file: checks that read the disk or the
model registry (dataset folders, the resume checkpoint, the encoder name) are
``server_app.preflight``'s.

``pyproject.toml`` ``[tool.flwr.app.config]`` holds the same defaults because
Flower reads them from there; it is generated from this class
(``python -m tools.sync_pyproject_defaults``) and a test keeps both
equal. Override any key with ``flwr run . --run-config "key=value ..."`` or a
TOML file.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from app_config.numbers import real_number

# Choices whose implementations live in higher layers; tests keep each equal to its implementation
# (strategies.registry.STRATEGIES, strategies.dp.DP_MODES, data_partition.datasets.DATASETS,
# data_partition.partition.PARTITIONERS).
StrategyName = Literal["bulyan", "creamfl", "fedadagrad", "fedadam", "fedavg", "fedavgm", "fedmedian", "fedprox",
                       "fedtrimmedavg", "fedvssl", "fedyogi", "krum", "ldawa", "modality-wise", "multikrum"]
EncoderLayout = Literal["shared", "per-modality"]
MirrorFusion = Literal["concat", "mean"]
FedVSSLLoss = Literal["modality-mean", "sum"]
SSLObjective = Literal["nt-xent", "barlow-twins"]
WireFormat = Literal["arrays", "packed"]
DPMode = Literal["none", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive"]
ImageDataset = Literal["", "cifar10", "cifar100", "cluttered-digits", "digits", "tiny-imagenet", "vggsound-frames"]
AudioDataset = Literal["", "esc50", "noisy-spoken-digits", "speech-commands", "spoken-digits", "vggsound-audio"]
Partitioner = Literal["iid", "dirichlet", "pathological", "resample"]
Optimizer = Literal["auto", "sgd", "adamw", "repopt-sgd"]
LRSchedule = Literal["cosine", "constant"]
FaultMode = Literal["raise", "hang"]
Autocast = Literal["off", "bf16"]
UpdateDtype = Literal["float32", "float16"]
AUTO = "auto"
# Learning rate and weight decay take a number or "auto" (the encoder family's recipe, models/recipes.py).
PositiveOrAuto = Annotated[float, Field(gt=0, le=10)] | Literal["auto"]
DecayOrAuto = Annotated[float, Field(ge=0, le=10)] | Literal["auto"]

MAX_ROUNDS = 100_000
MAX_CLIENTS = 1_000_000
MAX_WIDTH = 65_536
MAX_RATE = 100.0
MAX_TIMEOUT = 7 * 24 * 3600.0
KERNELS_PATTERN = r"^[1-9][0-9]?(,[1-9][0-9]?){0,3}$"  # 1 to 4 sizes; odd and <= 63 checked below


def kernel_sizes(text: str) -> tuple[int, ...]:
    """``'3,5,7'`` -> ``(3, 5, 7)`` (a kernel-size key's value, checked by the config)."""
    return tuple(int(part) for part in text.split(","))
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


class ConfigError(ValueError):
    """A run-config value that cannot work; the message is one line naming the key."""


def _key(default: Any, doc: str, **bounds: Any) -> Any:
    """A run-config field: its default, its documentation and its bounds (pydantic ``Field`` arguments)."""
    return Field(default, description=doc, **bounds)


def _alias(name: str) -> str:
    return name.replace("_", "-")


_MODEL_CONFIG = ConfigDict(
    strict=True,  # "3" is not an int, 1 is not a bool (an int is accepted where a float is expected)
    extra="forbid",
    allow_inf_nan=False,  # every float is finite
    alias_generator=_alias,
    validate_by_name=True,
    validate_by_alias=True,
)


@dataclass(frozen=True, config=_MODEL_CONFIG)
class _RunConfigFields:
    # --- federation -------------------------------------------------------
    num_server_rounds: int = _key(6, "Federated rounds to run.", ge=1, le=MAX_ROUNDS)
    strategy: StrategyName = _key("fedavg", "Aggregation strategy name (see strategies.registry.STRATEGIES).")
    ldawa_warmup_rounds: int = _key(3, "L-DAWA: first rounds aggregated with data-size FedAvg (the reference, "
                                       "yasar-rehman/L-DAWA main_CIFAR10_LDAWA.py, uses FedAvg in rounds 1-3 and "
                                       "L-DAWA from round 4); 0 = L-DAWA from round 1.", ge=0, le=MAX_ROUNDS)
    fraction_train: float = _key(1.0, "Fraction of connected clients sampled each round for training.", gt=0, le=1)
    fraction_evaluate: float = _key(0.0, "Fraction sampled for client-side SSL-loss evaluation (0 = off).", ge=0, le=1)
    min_train_nodes: int = _key(2, "Least clients a training round waits for; a round with fewer usable replies "
                                   "(after error replies and the reply checks) keeps the previous model.",
                                ge=1, le=MAX_CLIENTS)
    # --- strategy parameters --- (read by strategies.registry; each strategy takes only its own)
    proximal_mu: float = _key(0.01, "fedprox: weight mu of the clients' proximal term (mu/2)*||w - w_global||^2; "
                                    "sent to clients as 'proximal-mu' (0 = FedAvg).", ge=0, le=1e4)
    server_learning_rate: float = _key(1.0, "fedavgm: server learning rate applied to the momentum pseudo-gradient.",
                                     gt=0, le=MAX_RATE)
    server_momentum: float = _key(0.9, "fedavgm: server momentum in [0, 1) (0 with server-learning-rate 1 = FedAvg).",
                                    ge=0, lt=1)
    fedopt_eta: float = _key(0.01, "fedadam, fedyogi, fedadagrad: server learning rate eta.", gt=0, le=MAX_RATE)
    fedopt_beta1: float = _key(0.9, "fedadam, fedyogi: first-moment decay beta_1 in [0, 1).", ge=0, lt=1)
    fedopt_beta2: float = _key(0.99, "fedadam, fedyogi: second-moment decay beta_2 in [0, 1).", ge=0, lt=1)
    fedopt_tau: float = _key(0.001, "fedadam, fedyogi, fedadagrad: adaptivity tau > 0 (added to sqrt(v)).",
                               gt=0, le=MAX_RATE)
    trimmed_beta: float = _key(0.2, "fedtrimmedavg: fraction in [0, 0.5) cut from each tail per coordinate.",
                                 ge=0, lt=0.5)
    ldawa_weighting: bool = _key(False, "ldawa: weight clients by data size instead of the reference's uniform mean.")
    ldawa_normalise: bool = _key(False, "ldawa: divide by the sum of the deltas instead of the number of clients "
                                        "(not in the reference).")
    fedvssl_alpha: float = _key(0.9, "fedvssl: share alpha of the loss-based mean (client weights exp(-loss)) in "
                                     "alpha * theta_loss + (1 - alpha) * theta_fedavg; 0.9 is the paper's best.",
                                ge=0, le=1)
    fedvssl_beta: int = _key(1, "fedvssl: 1 = SWA, the new global model is the mean of the mixed aggregate and the "
                                "previous global model (from round 2); 0 = off.", ge=0, le=1)
    fedvssl_loss: FedVSSLLoss = _key("modality-mean", "fedvssl: the client loss L_k behind its weight exp(-L_k): "
                                     "'modality-mean' (mean over the modalities it trained of each one's mean "
                                     "NT-Xent) or 'sum' (its summed loss, the authors' rule taken literally).")
    fedvssl_partial_update: bool = _key(True, "fedvssl: clients load only the encoder from the global model and keep "
                                              "their own projection head across rounds (the paper's partial weight "
                                              "updating; kept in the node's context, not in server checkpoints).")
    num_malicious_nodes: int = _key(0, "krum, multikrum, bulyan: number f of Byzantine clients to tolerate "
                                       "(bulyan needs at least 4f + 3 good replies a round).", ge=0, le=MAX_CLIENTS)
    multikrum_select: int = _key(2, "multikrum: replies with the best Krum scores averaged each round.",
                                 ge=1, le=MAX_CLIENTS)
    weight_cap_factor: float = _key(4.0, "No reply weighs more than this many times the round's lower-median "
                                         "num-examples (0 = off; otherwise >= 1).", ge=0, le=1e6)
    update_norm_cap_factor: float = _key(10.0, "No reply's update (its float weights minus the global model, L2 "
                                               "norm) is larger than this many times the round's lower-median "
                                               "update norm; larger ones are scaled down to it (0 = off; "
                                               "otherwise >= 1).", ge=0, le=1e6)
    dp: DPMode = _key("none", "Differential privacy around the strategy: none, server-fixed, client-fixed, "
                           "server-adaptive or client-adaptive (Flower's wrappers; the client modes clip on the "
                           "ClientApp with client_app.dp_clipping).")
    dp_noise_multiplier: float = _key(1.0, "dp: noise multiplier sigma; the aggregate gets Gaussian noise of std "
                                           "sigma * C / m.", ge=0, le=1e3)
    dp_clipping_norm: float = _key(1.0, "dp: L2 norm C each update is clipped to (adaptive modes: the initial norm).",
                                        gt=0, le=1e9)
    dp_sampled_clients: int = _key(0, "dp: clients m the noise is calibrated for (0 = min-train-nodes).",
                                     ge=0, le=MAX_CLIENTS)
    dp_target_quantile: float = _key(0.5, "dp adaptive modes: fraction of updates that should be clipped.",
                                       ge=0, le=1)
    dp_clip_norm_lr: float = _key(0.2, "dp adaptive modes: learning rate of the clipping norm's geometric update.",
                                    gt=0, le=MAX_RATE)
    dp_clipped_count_stddev: float = _key(0.0, "dp adaptive modes: std of the noise on the count of clipped updates "
                                               "(0 = sampled clients / 20; must exceed dp-noise-multiplier / 2).",
                                          ge=0, le=1e6)
    mirror_phase1_rounds: int = _key(0, "modality-wise: ModalityMirror's phase 1 (modality-wise FedAvg of the "
                                        "per-modality encoders) lasts rounds 1..k; later rounds are phase 2, "
                                        "distillation from the audio-visual teacher (the model after round k, "
                                        "frozen; the server sends its audio encoder beside the model) into the "
                                        "audio encoder on the audio-visual clients only; the others reply "
                                        "without training. Adaptation: the clients hold unpaired images and "
                                        "clips, so a teacher pair is an image and a clip of the same class from "
                                        "the client's own data (labels form the pairs, nothing else; "
                                        "ssl_method.mirror_training). 0 = phase 1 for the whole run.",
                                     ge=0, le=MAX_ROUNDS)
    mirror_temperature: float = _key(0.2, "modality-wise, phase 2: temperature T of the relational distillation "
                                          "(softmax over each sample's cosines to the other samples of the batch).",
                                     gt=0, le=100)
    mirror_fusion: MirrorFusion = _key("concat", "modality-wise, phase 2: the teacher's fused feature of a "
                                                 "class-paired image and clip, 'concat' [u/|u|, v/|v|]/sqrt(2) or "
                                                 "'mean' (u/|u| + v/|v|)/2 of the two encoders' features.")
    mirror_distill_weight: float = _key(1.0, "modality-wise, phase 2: weight of the relational distillation loss.",
                                        ge=0, le=1e6)
    mirror_ssl_weight: float = _key(1.0, "modality-wise, phase 2: weight of the audio student's own NT-Xent loss "
                                         "on two views of its clips.", ge=0, le=1e6)
    creamfl_public_size: int = _key(500, "creamfl (Yu et al., ICLR 2023): N, the public image-audio pairs whose "
                                         "representations travel instead of weights. Adaptation: the paper's "
                                         "public set is co-recorded pairs; here it is N class-paired (an image "
                                         "and a clip of the same class, seeded, classes in turn) samples of the "
                                         "training splits, held apart from every client's part "
                                         "(data_partition.public_set). Bounded because the server holds each "
                                         "reply's N x projection-dim values (scores are formed in row chunks, "
                                         "never N x N).", ge=8, le=50_000)
    creamfl_tau: float = _key(0.5, "creamfl, clients: temperature of the inter- and intra-modal contrasts (the "
                                   "authors' 0.5).", gt=0, le=100)
    creamfl_regulariser_weight: float = _key(0.5, "creamfl, clients: weight of the inter- + intra-modal "
                                                  "regulariser added to the local SSL loss (the authors' "
                                                  "--interintra_weight 0.5).", ge=0, le=1e6)
    creamfl_kd_weight: float = _key(0.3, "creamfl, server: weight of the MSE distillation of the server model's "
                                         "public representations towards the clients' ensemble (the authors' "
                                         "--kd_weight 0.3).", ge=0, le=1e6)
    # --- end of strategy parameters ---
    # --- model ------------------------------------------------------------
    encoder: str = _key("resnet18_half_cifar", "timm model name: resnet18_half_cifar (ResNet-18 at half width, "
                                                "the CPU default), resnet18_cifar, vit_tiny_cifar or any timm model.",
                                                min_length=1, max_length=200)
    encoder_layout: EncoderLayout = _key("shared", "'shared': one encoder and projection head for both modalities "
                                                    "(FSSUAVL); 'per-modality': one of each per modality, state-dict "
                                                    "names prefixed image. / audio. (ModalityMirror, "
                                                    "strategy='modality-wise'; twice the parameters and bytes).")
    inceptionnext_time_kernels: str = _key("3,5,7", "audio_(rep)inceptionnext_* encoders: the depth-wise kernel "
                                                    "size along time of each branch, comma-separated odd sizes "
                                                    "(the papers' 3,11,21 is near-global on a 32-frame clip).",
                                           pattern=KERNELS_PATTERN)
    inceptionnext_freq_kernels: str = _key("3,5,7", "audio_(rep)inceptionnext_* encoders: the kernel size along "
                                                    "frequency of each branch (as many as along time).",
                                           pattern=KERNELS_PATTERN)
    projection_hidden_dim: int = _key(512, "Hidden width of the SimCLR projection MLP.", ge=1, le=MAX_WIDTH)
    projection_dim: int = _key(128, "Output width of the projection MLP (NT-Xent space).", ge=1, le=MAX_WIDTH)
    # --- data -------------------------------------------------------------
    image_dataset: ImageDataset = _key("digits", "Image dataset name; '' for none.")
    audio_dataset: AudioDataset = _key("spoken-digits", "Audio dataset name; '' for none.")
    data_root: str = _key("", "Folder with datasets and caches; '' = $FSSUAVL_DATA_ROOT or ~/.cache/fssuavl.")
    image_size: int = _key(16, "Side (px) of image crops fed to the encoder.", ge=8, le=1024)
    image_min_crop_scale: float = _key(0.5, "Smallest area share of a random resized crop (SimCLR on CIFAR: 0.08-0.2; "
                                            "0.5 keeps small digits legible).", gt=0, le=1)
    image_hflip: bool = _key(False, "Random horizontal flips (SimCLR default on; off for orientation-bound digits).")
    image_hue_jitter: float = _key(0.1, "Largest hue shift of the colour jitter, as a share of the hue circle "
                                        "(SimCLR: 0.1-0.2; 0.5 = any hue, for sets whose colours are arbitrary, "
                                        "as cluttered-digits).", ge=0, le=0.5)
    image_grayscale_p: float = _key(0.2, "Probability that a view is turned to grey (SimCLR: 0.2; 0.5 on "
                                         "cluttered-digits).", ge=0, le=1)
    audio_n_mels: int = _key(32, "Mel bands of the log-mel spectrogram.", ge=8, le=512)
    audio_hop_ms: float = _key(32.0, "Spectrogram hop in ms (1 s clip -> 1000/hop frames).", gt=0, le=1000)
    audio_win_ms: float = _key(64.0, "Spectrogram window in ms.", gt=0, le=1000)
    audio_stretch: float = _key(0.25, "Largest per-sample stretch of an audio view's frequency and time axes (0.25: "
                                      "+-25 %, a pitch / formant and tempo change; 0 = none).", ge=0, le=1)
    # --- partition --------------------------------------------------------
    partitioner: Partitioner = _key("dirichlet", "'iid', 'dirichlet' (label skew), 'pathological' "
                                                 "(k classes per client) or 'resample' (scale tests only: each "
                                                 "client draws its own overlapping random subset of the pool, "
                                                 "so any number of clients fits; not a disjoint split).")
    dirichlet_alpha: float = _key(0.5, "Dirichlet concentration; smaller = more label skew.", gt=0, le=1e6)
    min_partition_size: int = _key(2, "Least samples per client and held modality.", ge=0, le=1_000_000)
    classes_per_client: int = _key(2, "pathological: classes each client holds (client i always has class i mod C).",
                                  ge=1, le=100_000)
    frac_visual_clients: float = _key(0.4, "Fraction of clients holding only images.", ge=0, le=1)
    frac_audio_clients: float = _key(0.3, "Fraction of clients holding only audio.", ge=0, le=1)
    frac_audiovisual_clients: float = _key(0.3, "Fraction holding both (unpaired); the three sum to 1.", ge=0, le=1)
    visual_data_share: float = _key(1.0, "Share (0-1] of its image part a client keeps.", gt=0, le=1)
    audio_data_share: float = _key(1.0, "Share (0-1] of its audio part a client keeps.", gt=0, le=1)
    # --- local training ---------------------------------------------------
    local_epochs: int = _key(1, "Local epochs per round (over the client's larger modality).", ge=1, le=10_000)
    max_local_steps: int = _key(0, "Cap on local steps per round; 0 = no cap.", ge=0, le=10_000_000)
    batch_size: int = _key(16, "Samples per modality per step (16: twice the local steps of 32 for about 1.25x "
                               "the time on a CPU; raise it on a GPU).", ge=2, le=65_536)
    optimizer: Optimizer = _key("auto", "'auto' (the encoder family's recipe: SGD for convnets, AdamW for vision "
                                  "transformers; models/recipes.py), 'sgd' (momentum), 'adamw' or 'repopt-sgd' "
                                  "(RepOptimizer: SGD with the gradient multipliers of repopt-scales, for the plain "
                                  "repopt_vgg_* / repopt_ghostnet_* encoders; models/repopt.py).")
    learning_rate: PositiveOrAuto = _key("auto", "Base local learning rate, or 'auto' (convnets 0.1, transformers "
                                              "2e-4 x sqrt(batch-size / 16)); each round's rate follows lr-schedule.")
    lr_schedule: LRSchedule = _key("cosine", "Learning rate across rounds, sent by the server each round: 'cosine' "
                                      "(decay after the warm-up) or 'constant'.")
    lr_warmup_rounds: int = _key(1, "Rounds of linear learning-rate warm-up before the schedule (0 = none).",
                                 ge=0, le=MAX_ROUNDS)
    momentum: float = _key(0.9, "SGD momentum.", ge=0, lt=1)
    weight_decay: DecayOrAuto = _key("auto", "Weight decay, or 'auto' (convnets 5e-4, transformers 0.05).")
    repopt_scales: str = _key("", "File of a hyper-searched RepOpt network's CSLA scales (python -m "
                                  "experiments.repopt_search); required by optimizer='repopt-sgd'.", max_length=4096)
    ssl_objective: SSLObjective = _key("nt-xent", "The SSL loss on two views' projections: 'nt-xent' (SimCLR, the "
                                     "method's) or 'barlow-twins' (Zbontar et al. 2021; FASSL's feature-matching "
                                     "comparison).")
    temperature: float = _key(0.2, "NT-Xent temperature.", gt=0, le=100)
    barlow_lambda: float = _key(0.0051, "barlow-twins: weight of the off-diagonal (redundancy) term; 0.0051 is the "
                                        "authors' value.", ge=0, le=10)
    # --- evaluation and output -------------------------------------------
    eval_every: int = _key(3, "Central kNN/linear-probe evaluation every k rounds (round 0 and the last always).",
                          ge=0, le=MAX_ROUNDS)
    keep_best_models: bool = _key(False, "FASSL's task-aware selection: after each evaluated round keep, per "
                                         "downstream task (knn-image, probe-audio, ...), the best global model so "
                                         "far as best-<task>.pt, listed with its round in summary.json (selected "
                                         "on the labelled held-out split).")
    save_every: int = _key(0, "Also save the global model every k rounds (and round 0) as round-NNNN.pt; "
                              "0 = final only.",
                          ge=0, le=MAX_ROUNDS)
    eval_train_samples: int = _key(5000, "Central evaluation fits kNN and the probe on at most this many training "
                                         "samples per modality (seeded, class-stratified, the same every round; "
                                         "0 = the whole split); the held-out split is scored whole.",
                                   ge=0, le=100_000_000)
    knn_k: int = _key(10, "Neighbours for kNN accuracy.", ge=1, le=100_000)
    eval_timeout: float = _key(1800.0, "Seconds one central evaluation may take; past it the round is recorded "
                                       "with eval-skipped and why, the run goes on and later evaluations are "
                                       "skipped (0 = unbounded).", ge=0, le=MAX_TIMEOUT)
    seed: int = _key(42, "Seed of partitions, initial weights and local training.", ge=0, lt=2**32)
    run_dir: str = _key("runs", "Where each run's folder (metrics, model) is written; relative = to the working dir.")
    tensorboard: bool = _key(True, "Also write per-round scalars as TensorBoard event files to "
                                   "<run folder>/tensorboard/.")
    send_encoder_only: bool = _key(False, "FASSL's backbone-only transmission: the server sends only the encoder and "
                                          "clients reply with only theirs, each keeping its own projection head "
                                          "(from the seeded initial one); the head's bytes never travel.")
    wire_format: WireFormat = _key("arrays", "How the model travels in train messages: 'arrays' (Flower's ArrayRecord, "
                                   "one object per array, about 120 for the default encoder) or 'packed' (one "
                                   "buffer per dtype plus a layout, three objects; unpacked and checked on "
                                   "arrival).")
    update_dtype: UpdateDtype = _key("float32", "How model weights travel: 'float16' halves the bytes both ways (the "
                                               "server sends the global model as float16 and casts the clients' "
                                               "float16 replies back to float32 before its checks; float16 replies "
                                               "are refused unless the run sets this; values beyond float16's range "
                                               "travel as float32).")
    autocast: Autocast = _key("off", "Local training's forward passes in bfloat16 autocast ('bf16', on CUDA and "
                                     "CPU; the loss and the weights stay float32) or 'off'.")
    channels_last: bool = _key(False, "Local training with the encoder and image batches in channels-last memory "
                                      "format (faster convolutions on recent GPUs); replies are sent in the usual "
                                      "layout.")
    device: str = _key("auto", "'auto' (CUDA when present), 'cpu' or 'cuda[:i]'.",
                       pattern=DEVICE_PATTERN)
    # --- reliability ------------------------------------------------------
    checkpoint_every: int = _key(1, "Write a resumable checkpoint (<run folder>/checkpoint.pt: global model, round, "
                                    "strategy state, RNG states, metrics history) every k rounds; 0 = never.",
                                ge=0, le=MAX_ROUNDS)
    resume_from: str = _key("", "Continue a run from a checkpoint: its run folder or checkpoint file; '' = fresh run. "
                                "Rounds resume at the checkpoint's round + 1 in the checkpoint's run folder.")
    round_timeout: float = _key(3600.0, "Seconds the server waits for a round's replies; clients answering later "
                                        "count as failures and the round aggregates the replies it has.",
                                    gt=0, le=MAX_TIMEOUT)
    plan_check: bool = _key(True, "The ServerApp checks, before round 1, that the federation plan can be made for "
                                  "the connected nodes (an impossible plan is a one-line error, not a failure in every "
                                  "client); false for a deployment whose nodes read their own data-dir.")
    deterministic: bool = _key(False, "torch.use_deterministic_algorithms(True, warn_only=True) on server and "
                                      "clients (bitwise-reproducible CPU runs).")
    fault_rate: float = _key(0.0, "Tests/experiments only: probability that a client's train call fails, decided by "
                                  "a hash of (seed, round, partition) so the failing clients are known in advance.",
                              ge=0, le=1)
    fault_mode: FaultMode = _key("raise", "How an injected fault fails: 'raise' (the ClientApp raises) or 'hang' (the "
                                    "client sleeps past round-timeout, then raises).")

    @model_validator(mode="after")
    def _consistent(self) -> _RunConfigFields:
        """Rules between keys (each key's own range is its field's bounds)."""
        fracs = (self.frac_visual_clients, self.frac_audio_clients, self.frac_audiovisual_clients)
        if abs(sum(fracs) - 1.0) >= 1e-6:
            raise ValueError("frac-visual-clients + frac-audio-clients + frac-audiovisual-clients: must be >= 0 and "
                             f"sum to 1 (got {sum(fracs):g})")
        if self.frac_visual_clients + self.frac_audiovisual_clients > 0 and not self.image_dataset:
            raise ValueError(f"image-dataset: unknown value ''; valid: {_choice_text(ImageDataset, False)}")
        if self.frac_audio_clients + self.frac_audiovisual_clients > 0 and not self.audio_dataset:
            raise ValueError(f"audio-dataset: unknown value ''; valid: {_choice_text(AudioDataset, False)}")
        if self.weight_cap_factor != 0 and self.weight_cap_factor < 1:
            raise ValueError(f"weight-cap-factor: must be 0 (off) or >= 1, got {self.weight_cap_factor!r}")
        if self.update_norm_cap_factor != 0 and self.update_norm_cap_factor < 1:
            raise ValueError(f"update-norm-cap-factor: must be 0 (off) or >= 1, got {self.update_norm_cap_factor!r}")
        if self.audio_hop_ms > self.audio_win_ms:
            raise ValueError(f"audio-hop-ms: must be > 0 and <= audio-win-ms ({self.audio_win_ms:g}), "
                             f"got {self.audio_hop_ms!r}")
        if self.update_dtype == "float16" and self.dp.startswith("client-"):
            raise ValueError(f"update-dtype: 'float16' cannot be combined with dp={self.dp!r} (the clipping runs "
                             "on the reply's arrays); use a server-side dp mode or update-dtype='float32'")
        for key, text in (("inceptionnext-time-kernels", self.inceptionnext_time_kernels),
                          ("inceptionnext-freq-kernels", self.inceptionnext_freq_kernels)):
            if any(k % 2 == 0 or k > 63 for k in kernel_sizes(text)):
                raise ValueError(f"{key}: odd kernel sizes from 1 to 63 (e.g. '3,5,7'), got {text!r}")
        if len(kernel_sizes(self.inceptionnext_time_kernels)) != len(kernel_sizes(self.inceptionnext_freq_kernels)):
            raise ValueError(f"inceptionnext-freq-kernels: one size per branch, as many as inceptionnext-time-kernels "
                             f"({self.inceptionnext_time_kernels!r}), got {self.inceptionnext_freq_kernels!r}")
        self._check_layout()
        if self.optimizer == "repopt-sgd":
            if not self.encoder.startswith(("repopt_vgg", "repopt_ghostnet")) \
                    or self.encoder.endswith(("_csla", "_hs", "_repvgg", "_rep")):
                raise ValueError(f"optimizer: 'repopt-sgd' trains a plain RepOpt target encoder (e.g. "
                                 f"'repopt_vgg_tiny_cifar', 'repopt_ghostnet_tiny_cifar'), not {self.encoder!r}")
            if not self.repopt_scales:
                raise ValueError("repopt-scales: optimizer='repopt-sgd' needs the file of CSLA scales "
                                 "(python -m experiments.repopt_search)")
            if self.dp.startswith("client-"):
                raise ValueError(f"dp: {self.dp!r} clips each client's update, which breaks RepOpt's equivalence "
                                 "with the CSLA network; use a server-side dp mode with optimizer='repopt-sgd'")
            if self.strategy == "fedprox":
                raise ValueError("strategy: 'fedprox' adds its proximal term to the gradients RepOptimizer multiplies, "
                                 "which breaks RepOpt's equivalence with the CSLA network; use another strategy with "
                                 "optimizer='repopt-sgd'")
        return self

    def _check_layout(self) -> None:
        """The per-modality layout and ModalityMirror's keys against the rest (each conflict one line)."""
        per_modality = self.encoder_layout == "per-modality"
        if self.strategy == "modality-wise" and not per_modality:
            raise ValueError("strategy: 'modality-wise' averages each modality's own encoder; it needs "
                             "encoder-layout='per-modality'")
        if per_modality and self.send_encoder_only:
            raise ValueError("send-encoder-only: the per-modality layout has a head per modality; use "
                             "encoder-layout='shared' with send-encoder-only=true")
        if per_modality and self.strategy == "fedvssl" and self.fedvssl_partial_update:
            raise ValueError("fedvssl-partial-update: not available with encoder-layout='per-modality'")
        if per_modality and self.optimizer == "repopt-sgd":
            raise ValueError("optimizer: 'repopt-sgd' needs encoder-layout='shared' (one RepOpt network)")
        if self.strategy == "modality-wise" and self.dp != "none":
            raise ValueError(f"dp: {self.dp!r} adds noise to every array, also to the encoders a modality-wise "
                             "round must keep; use dp='none' with strategy='modality-wise'")
        if self.strategy == "creamfl":
            self._check_creamfl()
        if self.mirror_phase1_rounds and self.strategy != "modality-wise":
            raise ValueError("mirror-phase1-rounds: ModalityMirror's phases need strategy='modality-wise' "
                             f"(got {self.strategy!r})")
        if self.mirror_phase1_rounds and self.mirror_phase1_rounds >= self.num_server_rounds:
            raise ValueError(f"mirror-phase1-rounds: {self.mirror_phase1_rounds} is not below num-server-rounds="
                             f"{self.num_server_rounds}, so phase 2 would never run; use 0 for phase 1 only")
        if self.mirror_phase1_rounds and self.mirror_distill_weight == 0 and self.mirror_ssl_weight == 0:
            raise ValueError("mirror-distill-weight and mirror-ssl-weight are both 0: phase 2 would train nothing")

    def _check_creamfl(self) -> None:
        """CreamFL's representations replace the model on the wire: what cannot go with that, one line each."""
        for wanted, key, value in (("shared", "encoder-layout", self.encoder_layout), ("none", "dp", self.dp),
                                   ("arrays", "wire-format", self.wire_format)):
            if value != wanted:
                raise ValueError(f"{key}: strategy='creamfl' sends public-set representations, not the model; "
                                 f"use {key}={wanted!r}")
        if self.send_encoder_only:
            raise ValueError("send-encoder-only: strategy='creamfl' sends no weights; use send-encoder-only=false")
        if not self.image_dataset or not self.audio_dataset:
            raise ValueError("strategy: 'creamfl' needs a public set of image-audio pairs; set both image-dataset "
                             "and audio-dataset")


class RunConfig(_RunConfigFields):
    """The run config (frozen, hashable, a dataclass): built from keyword arguments by field name or key.

    Construction raises :class:`ConfigError` instead of pydantic's ``ValidationError``:
    one line naming the key, for the launcher, the suite and the ServerApp to print as is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except ValidationError as err:
            raise ConfigError(describe_error(err)) from None

    @classmethod
    def keys(cls) -> dict[str, object]:
        """Config-key spelling (hyphens) -> default."""
        return {_alias(name): info.default for name, info in _FIELDS.items()}

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Config key -> its documentation."""
        return {_alias(name): info.description or "" for name, info in _FIELDS.items()}

    @classmethod
    def from_mapping(cls, values: dict) -> RunConfig:
        """Build from a Flower run config (keys with hyphens); unknown keys and bad values are ConfigErrors."""
        return cls(**dict(values))

    def as_mapping(self) -> dict[str, object]:
        """Config key -> value, as Flower's run config and ``config.json`` spell it."""
        return {_alias(name): getattr(self, name) for name in _FIELDS}

    def validate(self) -> RunConfig:
        """Self: a RunConfig is checked when it is built (kept for callers that check explicitly)."""
        return self


# the fields pydantic collected (its mypy plugin does not model this attribute of pydantic dataclasses)
_FIELDS: dict[str, FieldInfo] = _RunConfigFields.__pydantic_fields__  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- one-line errors
_TYPE_NAMES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str"}


def _literal_args(annotation: Any) -> tuple:
    """The choices of a ``Literal`` annotation (inside a union too), else ()."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(choice for arg in get_args(annotation) for choice in _literal_args(arg))


def _choice_text(annotation: Any, none_allowed: bool = True) -> str:
    choices = [c for c in _literal_args(annotation) if c != ""]
    text = ", ".join(str(c) for c in choices)
    return text + " ('' for none)" if none_allowed and "" in _literal_args(annotation) else text


def _bounds(info: FieldInfo) -> list[object]:
    """The ``annotated_types`` bounds of a field (also those of a number inside a number-or-auto union)."""
    found = list(info.metadata)
    for arg in get_args(info.annotation):
        found += [m for m in getattr(arg, "__metadata__", ()) if isinstance(m, annotated_types.BaseMetadata)]
        for inner in get_args(arg)[1:]:
            if isinstance(inner, FieldInfo):
                found += inner.metadata
    return found


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _bounds_text(info: FieldInfo) -> str:
    low: tuple[str, float] | None = None
    high: tuple[str, float] | None = None
    for b in _bounds(info):
        if isinstance(b, annotated_types.Ge):
            low = ("[", float(b.ge))  # type: ignore[arg-type]
        elif isinstance(b, annotated_types.Gt):
            low = ("(", float(b.gt))  # type: ignore[arg-type]
        elif isinstance(b, annotated_types.Le):
            high = ("]", float(b.le))  # type: ignore[arg-type]
        elif isinstance(b, annotated_types.Lt):
            high = (")", float(b.lt))  # type: ignore[arg-type]
    if low and high:
        return f"in {low[0]}{_number_text(low[1])}, {_number_text(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_number_text(low[1])}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {_number_text(high[1])}"
    return "valid"


def _is_number(value: object) -> bool:
    return real_number(value, finite=False) is not None


def _field_message(name: str, kind: str, value: object) -> str:
    key, info = _alias(name), _FIELDS[name]
    choices = _literal_args(info.annotation)
    number_or_auto = AUTO in choices
    if kind == "finite_number" or (_is_number(value) and isinstance(value, float) and not math.isfinite(value)):
        return f"{key}: must be a finite number, got {value!r}"
    if number_or_auto and not _is_number(value):
        return f"{key}: expected a number or 'auto', got {value!r}"
    if choices and not number_or_auto:
        return f"{key}: unknown value {value!r}; valid: {_choice_text(info.annotation)}"
    if kind == "string_pattern_mismatch" and name == "device":
        return f"{key}: unknown value {value!r}; valid: {DEVICE_CHOICES}"
    if kind in _TYPE_NAMES:
        return f"{key}: expected {_TYPE_NAMES[kind]}, got {value!r}"
    if kind in ("string_too_short", "string_too_long"):
        return f"{key}: expected a name of 1 to 200 characters, got {value!r}"
    return f"{key}: must be {_bounds_text(info)}, got {value!r}"


def describe_error(err: ValidationError) -> str:
    """The first problem of a RunConfig validation error as one line naming the key (unknown keys first)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] in ("unexpected_keyword_argument", "extra_forbidden")), errors[0])
    loc = first["loc"]
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return (f"unknown config key {loc[0]!r}; valid keys: {', '.join(sorted(RunConfig.keys()))} "
                "(documented in app_config/run_config.py)")
    if not loc:  # a rule between keys: its message already names them
        return " ".join(str(first.get("ctx", {}).get("error", first["msg"])).split())
    name = str(loc[0]).replace("-", "_")
    if name not in _FIELDS:
        return f"{loc[0]}: {first['msg']}"
    return _field_message(name, first["type"], first.get("input"))


def docs_table() -> str:
    """Markdown table of every key (used by the README)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, default in RunConfig.keys().items():
        rows.append(f"| `{key}` | `{default!r}` | {RunConfig.docs()[key]} |")
    return "\n".join(rows)


def pyproject_section() -> str:
    """``[tool.flwr.app.config]`` of pyproject.toml: every key with its default, as Flower reads them."""
    lines = ["# Run config: every key with its default, generated from app_config/run_config.py",
             "# (python -m tools.sync_pyproject_defaults). Meanings: app_config/run_config.py.",
             "[tool.flwr.app.config]"]
    import tomli_w  # only the development tool and the tests write pyproject.toml

    return "\n".join(lines) + "\n" + tomli_w.dumps(dict(RunConfig.keys()))


if __name__ == "__main__":
    print(docs_table())
