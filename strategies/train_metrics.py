"""Aggregation of client train metrics that knows about modalities.

Flower's default weights every metric by ``num-examples``; a per-modality loss
must instead be weighted by that modality's example count, so a visual-only
client's zero audio loss does not drag the audio mean down.
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

PER_MODALITY_WEIGHT = {"loss-image": "num-image-examples", "loss-audio": "num-audio-examples"}
SUMMED = ("num-image-examples", "num-audio-examples", "train-seconds", "samples")


def aggregate_train_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    metrics = [next(iter(r.metric_records.values())) for r in records]
    out = MetricRecord()
    out["clients"] = len(metrics)
    keys = sorted({k for m in metrics for k in m.keys()} - {weighting_key})
    for key in keys:
        values = [(float(m[key]), m) for m in metrics if key in m]
        if key in SUMMED:
            out[key] = sum(v for v, _ in values)
            continue
        weight_key = PER_MODALITY_WEIGHT.get(key, weighting_key)
        weights = [float(m.get(weight_key, 0.0)) for _, m in values]
        total = sum(weights)
        if total > 0:
            out[key] = sum(v * w for (v, _), w in zip(values, weights)) / total
    out["clients-image"] = sum(1 for m in metrics if float(m.get("num-image-examples", 0)) > 0)
    out["clients-audio"] = sum(1 for m in metrics if float(m.get("num-audio-examples", 0)) > 0)
    return out
