"""Fine-tuning speed on CPU beside pretraining's, for the same encoder, and where the time goes.

All figures come from one run (ratios are what to compare on a shared machine):

* ``pretrain_step``: one pretraining optimizer step of the AudioMAE (80 % of patches masked, the
  decoder included) on a fixed batch: samples/s;
* ``finetune_step``: one fine-tuning step of the classifier on the same encoder (all 250 patches,
  drop path, the default bands + MLP head), fixed batch: samples/s; with the FLOP ratio beside it;
* the data path per training sample, in the main process: decoding a clip and its log-mel (first
  epoch only: the log-mels are cached), the random crop, SpecAugment, mixup (a second crop), and
  the DataLoader's collation; and per epoch, validation on the validation split;
* ``end_to_end``: ``audiomaepp.finetune`` itself for a few epochs (data in the main process,
  validation and a checkpoint every epoch), its logged samples/s.

    python -m benchmarks.bench_finetune_speed --task demo_out/corpus/tasks/synth_family
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import device_info, write_result


def timed(fn, repeat: int) -> float:
    """Seconds per call (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def step_speed(model: torch.nn.Module, loss_fn, batch: int, repeat: int, noise_cols: int) -> float:
    """Samples/s of forward + backward + AdamW on a fixed random batch."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 1, 200, 80)
    noise = torch.rand(batch, noise_cols)

    def step() -> None:
        loss = loss_fn(x, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    return batch / timed(step, repeat)


def data_path(task_dir: Path, samples: int) -> dict[str, float]:
    """Milliseconds per training sample of each data stage (main process)."""
    from audiomaepp.finetune import load_task
    from audiomaepp.finetune.augment import mix, spec_augment
    from audiomaepp.finetune.data import LabelledCropDataset, LogMelCache, random_window

    task = load_task(task_dir)
    split = task.train_split(task.folds[0])
    paths = split.paths[:samples]
    cache = LogMelCache()
    t0 = time.perf_counter()
    lms = [cache.get(p) for p in paths]  # cold: decode + log-mel + standardise
    decode = (time.perf_counter() - t0) / len(paths)
    rng = np.random.default_rng(0)
    crops = [random_window(x, rng) for x in lms]
    crop = timed(lambda: [random_window(x, rng) for x in lms], 3) / len(lms)
    cached = timed(lambda: [cache.get(p) for p in paths], 3) / len(paths)
    masks = timed(lambda: [spec_augment(c, rng, 8, 20) for c in crops], 3) / len(crops)
    y = torch.zeros(task.num_classes)
    mixing = timed(lambda: [mix(c, crops[0], y, y, 0.5) for c in crops], 3) / len(crops)
    ds = LabelledCropDataset(split, len(split), rank_batch=32)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=0)
    ds.batch_size = 32
    ds.set_epoch(0)
    list(loader)  # fills the dataset's own cache
    t0 = time.perf_counter()
    n = sum(b["x"].shape[0] for b in loader)
    epoch = (time.perf_counter() - t0) / n
    ms = {
        "decode_logmel_first_epoch": decode,
        "cached_logmel": cached,
        "random_crop": crop,
        "spec_augment": masks,
        "mixup_mix": mixing,
        "loader_sample_cached_epoch": epoch,
    }
    return {k: 1000 * v for k, v in ms.items()}


def validation_ms(clf, task_dir: Path) -> tuple[float, int]:
    """Milliseconds of one validation pass (cached log-mels) and the clips it scores."""
    from audiomaepp.finetune import load_task
    from audiomaepp.finetune.data import EvalSet
    from audiomaepp.finetune.trainer import score_split

    task = load_task(task_dir)
    evalset = EvalSet(task.splits[task.folds[0].valid])
    score_split(clf, evalset, 64)  # fills the cache
    return 1000 * timed(lambda: score_split(clf, evalset, 64), 2), len(evalset.split)


def end_to_end(model: str, overrides: dict, task_dir: Path, epochs: int) -> dict:
    from audiomaepp.finetune import FinetuneConfig, finetune

    with tempfile.TemporaryDirectory() as tmp:
        cfg = FinetuneConfig.from_dict(  # the loop's fields given flat
            dict(
                model=model,
                model_overrides=overrides,
                task=str(task_dir),
                out_dir=tmp,
                batch_size=32,
                epochs=epochs,
                num_workers=0,
                progress=False,
                log_every=1,
            )
        )
        t0 = time.perf_counter()
        result = finetune(cfg)
        wall = time.perf_counter() - t0
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    sps = [r["samples_per_s"] for r in lines if "samples_per_s" in r][1:]  # first: cold cache
    steps = max(r["step"] for r in lines if "loss" in r)
    return {
        "wall_s": wall,
        "steps": steps,
        "samples_per_s_logged_median": float(np.median(sps)),
        "samples_per_s_wall": steps * 32 / wall,
        "test_top1": result.mean.get("top1_acc"),
    }


def main() -> None:
    from audiomaepp import AudioMAE, AudioMAEConfig
    from audiomaepp.demo import DEMO_MODEL
    from audiomaepp.finetune import build_classifier
    from audiomaepp.finetune.trainer import ClassifierLoss

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, help="a HEAR task folder (e.g. the demo's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--epochs", type=int, default=3, help="end-to-end fine-tuning epochs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task_dir = Path(args.task)
    torch.manual_seed(0)
    mae = AudioMAE(AudioMAEConfig.preset("tiny", **DEMO_MODEL))
    labels = [str(i) for i in range(5)]
    clf = build_classifier(
        "random:tiny",
        labels,
        "multiclass",
        overrides=DEMO_MODEL,
        pooling="bands",
        head="mlp",
        drop_path=0.1,
    )
    pre = step_speed(mae, lambda x, n: mae(x, noise=n).loss, args.batch, args.repeat, 250)
    loss = ClassifierLoss(clf, 0.1)
    y = torch.zeros(args.batch, len(labels))
    y[:, 0] = 1
    ft = step_speed(
        clf, lambda x, n: loss(x, y, n), args.batch, args.repeat, clf.config.num_patches
    )
    data = data_path(task_dir, 64)
    valid_ms, valid_clips = validation_ms(clf, task_dir)
    e2e = end_to_end("random:tiny", DEMO_MODEL, task_dir, args.epochs)
    per_sample_ms = 1000 / ft
    warm_data = data["loader_sample_cached_epoch"]
    doc = {
        "device": {**device_info(torch.device("cpu")), "torch_threads": torch.get_num_threads()},
        "model": "demo AudioMAE++ (4 x 64 encoder, 2 x 64 decoder)",
        "batch": args.batch,
        "pretrain_step_samples_per_s": pre,
        "finetune_step_samples_per_s": ft,
        "finetune_over_pretrain_speed": ft / pre,
        "flops_per_sample": {
            "pretrain": mae.flops_per_sample(),
            "finetune": clf.flops_per_sample(),
        },
        "data_ms_per_sample": data,
        "data_share_of_a_training_sample_cached": warm_data / (warm_data + per_sample_ms),
        "validation_ms_per_pass": valid_ms,
        "validation_clips": valid_clips,
        "end_to_end": e2e,
    }
    doc["flops_ratio_finetune_over_pretrain"] = (
        doc["flops_per_sample"]["finetune"] / doc["flops_per_sample"]["pretrain"]
    )
    print(json.dumps(doc, indent=1))
    write_result("finetune_speed_cpu", doc)


if __name__ == "__main__":
    main()
