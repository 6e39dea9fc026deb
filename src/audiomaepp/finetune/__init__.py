"""Fine-tuning: a pretrained encoder + a head -> an audio classifier (ESC-50 / AudioSet style).

Python entry points::

    from audiomaepp.finetune import FinetuneConfig, finetune, AudioClassifier
    cfg = FinetuneConfig(model="runs/base/model", task="tasks/esc50", out_dir="runs/esc")
    result = finetune(cfg)
    quick = FinetuneConfig(model=..., task=..., loop=FinetuneLoop(epochs=10))  # loop settings
    result.mean                      # {"top1_acc": ..., "mAP": ..., "d_prime": ...} over test folds
    clf = AudioClassifier.from_pretrained(result.model_dir)
    clf.predict(wave, sr).top(5)

The command lines are ``audiomaepp finetune`` and ``audiomaepp predict``.
"""

from .config import FinetuneConfig, FinetuneLoop
from .data import FinetuneTask, LabelledSplit, load_task, read_manifest
from .model import AudioClassifier, ClassifierConfig, ClassifierHead, Prediction, build_classifier
from .results import FinetuneResult, FoldResult
from .trainer import FinetuneTrainer, finetune

__all__ = [
    "FinetuneConfig",
    "FinetuneLoop",
    "finetune",
    "FinetuneResult",
    "FoldResult",
    "FinetuneTrainer",
    "AudioClassifier",
    "ClassifierConfig",
    "ClassifierHead",
    "Prediction",
    "build_classifier",
    "FinetuneTask",
    "LabelledSplit",
    "load_task",
    "read_manifest",
]
