"""CreamFL's server side in the round (Yu et al., ICLR 2023): representations of a public set travel, not weights.

``strategy='creamfl'``: each round the train messages carry, instead of the model, the global model's
representations of the public set (``ArrayRecord`` ``arrays``: ``image`` and ``audio``, N x d each, and
``image-index`` / ``audio-index``, the public pairs' positions in the training splits). Each client
replies with its own representations of the public set for the modalities it holds (``image`` and/or
``audio``, N x d) and keeps its own model (``client_app.creamfl_client``). The server then

1. screens the replies (:func:`representation_verdict`): the usual metric and client-info checks, and
   representations of exactly (N, d), the run's wire dtype, finite, of modalities the client's claimed
   kind holds; anything else is dropped and counted like any bad reply (``replies-dropped-*``);
2. hands the survivors to :class:`CreamFLRule`, whose server side (:class:`PublicSetServer`, built by the
   ServerApp: ``server_app.creamfl_server``) ensembles them per modality
   (``ssl_method.creamfl.aggregate_representations``), trains the server model on the public set and
   distils it towards the ensemble; the server model is the round's new global model (central evaluation,
   checkpoints and ``final_model.pt`` are unchanged).

Weights (``num-examples``) are still checked and capped but weigh nothing: the ensemble weights are
CreamFL's per-sample softmax over clients. Update-norm bounds do not apply (there is no update).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from app_config.modalities import KIND_MODALITIES, MODALITIES
from strategies.aggregation_rule import AggregationRule, ClientUpdate, RoundMetrics, as_numpy, refuse_unknown
from strategies.reply_check import ARRAYS_KEY, INFO_KEY, Spec, Verdict, classify_reply
from strategies.reply_filter import Drop, ScreenedReplies, for_aggregation
from strategies.rule_strategy import RuleStrategy

INDEX_SUFFIX = "-index"  # the bank record's public positions per modality: ``image-index``, ``audio-index``


class PublicSetServer(Protocol):
    """What the rule needs from the ServerApp: the public set, the global banks, the server's training."""

    wire_dtype: str  # "float32" or "float16": the banks sent and the replies accepted

    def indices(self) -> dict[str, np.ndarray]: ...

    def banks(self, global_model: ArrayRecord) -> dict[str, np.ndarray]: ...

    def distil(self, server_round: int, global_model: ArrayRecord, replies: dict[str, list[np.ndarray]],
               banks: dict[str, np.ndarray], learning_rate: float | None) -> tuple[ArrayRecord, dict[str, float]]: ...


def bank_record(banks: Mapping[str, np.ndarray], indices: Mapping[str, np.ndarray], dtype: str) -> ArrayRecord:
    """The train message's ``arrays``: each modality's bank in ``dtype`` and its public positions."""
    record = ArrayRecord()
    for modality in MODALITIES:
        record[modality] = Array(np.ascontiguousarray(banks[modality], dtype=dtype))
        record[modality + INDEX_SUFFIX] = Array(np.ascontiguousarray(indices[modality], dtype=np.int64))
    return record


def representation_spec(msg: Message, n: int, dim: int, dtype: str) -> Spec:
    """The arrays ``msg`` may hold: (n, dim) ``dtype`` representations of the modalities it sends when they
    are some of those its claimed kind holds, else of all of them (so the check names the difference)."""
    held: tuple[str, ...] = ()
    names: set[str] = set()
    try:
        info = msg.content.config_records.get(INFO_KEY)
        kind = info.get("kind") if info is not None else None
        held = KIND_MODALITIES.get(kind, ()) if isinstance(kind, str) else ()
        records = msg.content.array_records
        names = set(records[ARRAYS_KEY].keys()) if ARRAYS_KEY in records else set()
    except Exception:  # noqa: BLE001 - an unreadable reply is classified (and dropped) below
        pass
    chosen = sorted(names) if names and names <= set(held) else list(held or MODALITIES)
    return dict.fromkeys(chosen, ((n, dim), dtype))


def representation_verdict(msg: Message, n: int, dim: int, dtype: str, weighted_by_key: str = "num-examples"
                           ) -> Verdict:
    """``(category, reason)`` for a reply to drop (:func:`strategies.reply_check.classify_reply`'s categories),
    None for one to ensemble. Never raises."""
    return classify_reply(msg, representation_spec(msg, n, dim, dtype), weighted_by_key)


class CreamFLRule(AggregationRule):
    """CreamFL's server round: the clients' representations -> ensemble -> server training -> global model.

    Its settings are the run's (``creamfl-*``); its server side (:class:`PublicSetServer`) is attached by
    the ServerApp. It keeps no state across rounds: the banks are recomputed from the global model each
    round and the server model is the global model, so a checkpoint needs nothing more.
    """

    name = "creamfl"

    def __init__(self, public_size: int = 500, tau: float = 0.5, regulariser_weight: float = 0.5,
                 kd_weight: float = 0.3) -> None:
        if isinstance(public_size, bool) or not isinstance(public_size, int) or public_size < 1:
            raise ValueError(f"creamfl-public-size: must be an integer >= 1, got {public_size!r}")
        self.public_size, self.tau = public_size, tau
        self.regulariser_weight, self.kd_weight = regulariser_weight, kd_weight
        self.server: PublicSetServer | None = None
        self.round_banks: dict[str, np.ndarray] | None = None  # sent this round: the ensemble's "other" bank
        self.learning_rate: float | None = None  # this round's, for the server's training

    def describe(self) -> str:
        return (f"creamfl (public set {self.public_size} pairs; clients: tau {self.tau:g}, regulariser weight "
                f"{self.regulariser_weight:g}; server: kd weight {self.kd_weight:g})")

    def attached(self) -> PublicSetServer:
        if self.server is None:
            raise ValueError("creamfl: no server side attached (the ServerApp attaches it: "
                             "server_app.creamfl_server.attach_public_set)")
        return self.server

    def bank_message(self, global_model: ArrayRecord) -> ArrayRecord:
        """This round's banks of ``global_model`` as the train messages' record (remembered for the ensemble)."""
        server = self.attached()
        self.round_banks = server.banks(global_model)
        return bank_record(self.round_banks, server.indices(), server.wire_dtype)

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        server = self.attached()
        if global_model is None or self.round_banks is None:
            raise ValueError("creamfl: aggregate needs the round's global model and banks (configure_train first)")
        replies: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
        for update in updates:
            for modality, values in as_numpy(update.arrays).items():
                replies[modality].append(np.asarray(values, dtype=np.float32))
        model, server_metrics = server.distil(server_round, global_model, replies, self.round_banks,
                                              self.learning_rate)
        metrics: RoundMetrics = {f"creamfl-clients-{m}": len(replies[m]) for m in MODALITIES}
        metrics.update(server_metrics)
        return model, metrics

    def load_state_dict(self, state: Mapping) -> None:
        refuse_unknown(state, (), self.name)


class CreamFLStrategy(RuleStrategy):
    """The strategy shell whose train messages carry the public-set banks instead of the model and whose
    reply checks expect representations."""

    rule: CreamFLRule

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))  # remembers the model spec
        rate = config.get("learning-rate")
        self.rule.learning_rate = float(rate) if isinstance(rate, int | float) else None
        if messages:
            record = self.rule.bank_message(arrays)  # one record shared by every message
            for message in messages:
                message.content[ARRAYS_KEY] = record
        return messages

    def screen(self, server_round: int, replies: list[Message]) -> ScreenedReplies:
        """Drop and count replies that are not (N, d) representations of held modalities (module docstring)."""
        server = self.rule.attached()
        bank = next(iter(self.rule.round_banks.values())) if self.rule.round_banks else None
        n, dim = (bank.shape if bank is not None else (self.rule.public_size, 0))
        good: list[Message] = []
        counts: Counter = Counter()
        drops: list[Drop] = []
        for msg in replies:
            verdict = representation_verdict(msg, n, dim, server.wire_dtype, self.weighted_key)
            if verdict is None:
                good.append(msg)
                continue
            counts[verdict[0]] += 1
            drops.append((msg.metadata.src_node_id, verdict[0], f"node {msg.metadata.src_node_id}: {verdict[1]}"))
        return self.note_drops(server_round, replies, good, counts, drops, who="creamfl")

    def bound_updates(self, screened: ScreenedReplies) -> None:
        """The copies the rule sees; no norm bound: a representation is not an update of the model."""
        screened.copies = [for_aggregation(m, self.weighted_key, w, self.required_metrics)
                           for m, w in zip(screened.good, screened.weights)]
