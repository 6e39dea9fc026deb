"""Test-only stand-in for TensorFlow: hearvalidator imports it unconditionally.

It provides just what the validator touches for a PyTorch model (``tf.Module`` for an isinstance
check, ``tf.device``); it is never installed and never on the path outside these tests.
"""


class Module:  # a PyTorch model is never an instance of this
    pass


def device(name):  # pragma: no cover - only used for TensorFlow models
    raise RuntimeError("tensorflow stub: no TensorFlow models here")
