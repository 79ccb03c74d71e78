"""Aggregation of client train metrics that knows about modalities.

Flower's default weights every metric by ``num-examples``; a per-modality loss
must instead be weighted by that modality's example count, so a visual-only
client's zero audio loss does not drag the audio mean down.

It never trusts a value: anything but a finite int/float is skipped, weights
are normalised before multiplying (no ``value x weight`` overflow), a result
that is not finite is left out, and the server's own counts (``clients``,
``clients-image``, ``clients-audio``) are written last, so a client metric of
the same name cannot replace them.
"""

from __future__ import annotations

import math

from flwr.app import MetricRecord, RecordDict

from app_config.numbers import real_number

PER_MODALITY_WEIGHT = {"loss-image": "num-image-examples", "loss-audio": "num-audio-examples"}
SUMMED = ("num-image-examples", "num-audio-examples", "train-seconds", "samples")
SERVER_KEYS = ("clients", "clients-image", "clients-audio")


def _weight(metrics, key: str) -> float:
    value = real_number(metrics.get(key, 0.0))
    return value if value is not None and value > 0 else 0.0


def aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    metrics = [next(iter(r.metric_records.values())) for r in records]
    out = MetricRecord()
    keys = sorted({k for m in metrics for k in m.keys()} - {weighting_key} - set(SERVER_KEYS))
    for key in keys:
        values = [(v, m) for m in metrics if key in m and (v := real_number(m[key])) is not None]
        if not values:
            continue
        if key in SUMMED:
            total = math.fsum(v for v, _ in values)
        else:
            weight_key = PER_MODALITY_WEIGHT.get(key, weighting_key)
            weights = [_weight(m, weight_key) for _, m in values]
            weight_sum = math.fsum(weights)
            if not (weight_sum > 0 and math.isfinite(weight_sum)):
                continue
            total = math.fsum(v * (w / weight_sum) for (v, _), w in zip(values, weights))
        if math.isfinite(total):
            out[key] = total
    out["clients"] = len(metrics)
    out["clients-image"] = sum(1 for m in metrics if _weight(m, "num-image-examples") > 0)
    out["clients-audio"] = sum(1 for m in metrics if _weight(m, "num-audio-examples") > 0)
    return out
