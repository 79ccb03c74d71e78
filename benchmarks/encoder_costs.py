"""Every encoder's cost side by side, measured in one run on this machine: the table for small devices.

Per encoder (under the run's input sizes, default 16 px images and 32 mels x 32 frames of a 1 s clip):
parameters; FLOPs per image and per clip (:mod:`experiments.encoder_cost`); the bytes of one round's
model on the wire, out and back, as the ClientApp counts them (``client_app.resources.record_bytes``: float32
both ways, and with ``update-dtype='float16'`` replies narrowed by the wire rule);
CPU inference latency per clip (batch 32, eval mode, median of repeats), also after merging the
branches for the encoders that have an inference form (AudioRepInceptionNeXt); one SimCLR training
step (batch 16, two views, NT-Xent, forward + backward + SGD step); and the peak resident memory that
step adds, measured in a fresh process per encoder. Ratios are to the default encoder, measured in
the same run.

    python -m benchmarks.encoder_costs --out results/encoder_costs.md
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing as mp
import os
import resource
import statistics
import time
from pathlib import Path

from app_config.log_setup import setup_logging
from app_config.run_config import RunConfig

log = logging.getLogger("fssuavl.encoder_costs")

ENCODERS = ("resnet18_half_cifar", "resnet18_cifar", "vit_tiny_cifar", "repopt_vgg_tiny_cifar",
            "repopt_vgg_tiny_cifar_repvgg", "repopt_ghostnet_tiny_cifar", "repopt_ghostnet_tiny_cifar_rep",
            "audio_inceptionnext_tiny", "audio_repinceptionnext_tiny")
BATCH = 16
LATENCY_BATCH = 32


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(config: RunConfig, repeats: int) -> dict[str, float | int | str]:
    """One encoder's figures (run in a fresh process so that its peak memory is its own)."""
    import torch
    from flwr.app import ArrayRecord

    from client_app.resources import record_bytes
    from experiments.encoder_cost import encoder_cost, input_shapes
    from models.audio_inceptionnext import RepAxis, merge_branches
    from models.factory import build_model
    from ssl_method.losses import nt_xent
    from strategies.half_precision import narrow_arrays

    torch.manual_seed(0)
    shapes = input_shapes(config)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(config)
    cost = encoder_cost(config, shapes)
    arrays = ArrayRecord(model.state_dict())  # the model as a message carries it
    model_bytes, half_bytes = record_bytes(arrays), record_bytes(narrow_arrays(arrays))  # float16: the wire rule
    clip = torch.randn(LATENCY_BATCH, *shapes["audio"])
    encoder = model.encoder.eval()
    with torch.no_grad():
        latency = _median_seconds(lambda: encoder(clip), repeats) / LATENCY_BATCH
        merged_latency = float("nan")
        if any(isinstance(m, RepAxis) for m in encoder.modules()):
            merged = merge_branches(encoder)
            merged_latency = _median_seconds(lambda: merged(clip), repeats) / LATENCY_BATCH
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views = torch.randn(2, BATCH, *shapes["audio"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nt_xent(model(views[0]), model(views[1]), config.temperature)
        loss.backward()
        optimizer.step()

    step_seconds = _median_seconds(step, repeats)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"encoder": config.encoder, "params": cost["params"], "gflops-image": cost["flops-image"] / 1e9,
            "gflops-audio": cost["flops-audio"] / 1e9, "round-mb": 2 * model_bytes / 2**20,
            "round-mb-float16-replies": (model_bytes + half_bytes) / 2**20, "latency-ms": latency * 1e3,
            "merged-latency-ms": merged_latency * 1e3, "step-s": step_seconds,
            "peak-mb": (peak_rss - base_rss) / 1024}


def _child(config: RunConfig, repeats: int, queue) -> None:
    import torch

    torch.set_num_threads(2)
    queue.put(measure(config, repeats))


def measure_apart(config: RunConfig, repeats: int) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(config, repeats, queue))
    process.start()
    try:
        result = queue.get(timeout=1800)
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
    return result


def table(rows: list[dict], reference: str) -> str:
    ref = next(r for r in rows if r["encoder"] == reference)
    lines = ["| encoder | params (M) | GFLOPs image / clip | MiB per round (fp32 / fp16 replies) | "
             "latency per clip (ms) | merged (ms) | train step (s) | x default | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        merged = "-" if r["merged-latency-ms"] != r["merged-latency-ms"] else f"{r['merged-latency-ms']:.2f}"
        lines.append(f"| {r['encoder']} | {r['params'] / 1e6:.2f} | {r['gflops-image']:.3f} / "
                     f"{r['gflops-audio']:.3f} | {r['round-mb']:.1f} / {r['round-mb-float16-replies']:.1f} | "
                     f"{r['latency-ms']:.2f} | {merged} | {r['step-s']:.3f} | "
                     f"{r['step-s'] / ref['step-s']:.2f} | {r['peak-mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description="Cost of every encoder, side by side")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the table (markdown) here")
    args = parser.parse_args(argv)
    base = RunConfig()
    rows = []
    for name in args.encoders:
        log.info("measuring %s", name)
        rows.append(measure_apart(dataclasses.replace(base, encoder=name), args.repeats))
        log.info("%s", rows[-1])
    text = table(rows, base.encoder if base.encoder in args.encoders else args.encoders[0])
    print(text)
    if args.out is not None:
        from file_io.atomic import write_text

        header = (f"# Encoder costs\n\nMeasured by `python -m benchmarks.encoder_costs` in one run on a machine with "
                  f"{os.cpu_count()} CPU cores (no GPU), each encoder in a fresh process with 2 threads; "
                  f"inputs {base.image_size} px images and {base.audio_n_mels} mels "
                  f"of a 1 s clip; latency at batch {LATENCY_BATCH} (eval mode), train step at batch {BATCH} "
                  "with two views (NT-Xent, SGD); peak memory is the resident memory the model, its latency "
                  "runs and its training steps add to the process.\n\n")
        write_text(args.out, header + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
