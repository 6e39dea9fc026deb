"""Publishing a model on the Hugging Face Hub: :func:`push_to_hub` with a generated model card.

The Hub code lives beside the model-directory reader in :mod:`audiomaepp.model.hub` (loading by
repo id is part of reading a model directory); this module is the deployment-side name for it.
"""

from ..model.hub import REPO_ID, model_card, push_to_hub, resolve_model_dir

__all__ = ["push_to_hub", "model_card", "resolve_model_dir", "REPO_ID"]
