"""The ``audiomaepp`` command line: one module per sub-command, each with ``register(sub)``."""
