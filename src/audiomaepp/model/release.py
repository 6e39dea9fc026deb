"""Import of the authors' released checkpoints (spec §8) without executing pickled code.

The release saves ``torch.save({"model", "optimizer", "epoch", "scaler", "args"})`` where ``args``
is an ``argparse.Namespace`` holding an ``ml_collections.ConfigDict``. We read it with PyTorch's
``weights_only`` unpickler, which admits tensors, storages and plain containers only, and map those
two class names to inert stand-ins that just keep their state as data. Any other global
(``os.system``, ``builtins.eval``, ...) is refused before anything runs.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from .config import AudioMAEConfig
from .layers import rope_freqs
from .mae import AudioMAE

__all__ = [
    "InertObject",
    "load_release_checkpoint",
    "config_from_release_args",
    "convert_release_state_dict",
    "convert_release",
]


class InertObject:
    """Stand-in for ``argparse.Namespace`` / ``ConfigDict``: keeps pickled state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def to_data(self) -> Any:
        return _to_data(self.__dict__.get("_state"))


def _to_data(obj: Any) -> Any:
    """Turn inert objects and containers into plain JSON-able data (tensors become shapes)."""
    if isinstance(obj, InertObject):
        state = obj.to_data()
        if isinstance(state, dict) and "_fields" in state:  # ConfigDict keeps its items in _fields
            return state["_fields"]
        return state
    if isinstance(obj, dict):
        return {str(k): _to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_data(v) for v in obj]
    if torch.is_tensor(obj):
        return {"tensor": list(obj.shape)}
    return obj


_STAND_INS = [
    (InertObject, "argparse.Namespace"),
    (InertObject, "ml_collections.config_dict.config_dict.ConfigDict"),
    (InertObject, "ml_collections.config_dict.config_dict.FrozenConfigDict"),
]


def load_release_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a release checkpoint safely; returns its dict with ``args`` as plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else "an object outside the allow-list"
        raise UnsafeCheckpointError(
            f"{path}: refused to load — the pickle asks for {what}, which is not a tensor, storage "
            "or plain container. Nothing from it was executed. Only load checkpoints you trust "
            "the origin of; this one may be malicious or from an unsupported version."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if "model" not in ckpt:
        # a bare state dict is accepted too
        ckpt = {"model": ckpt}
    ckpt["args"] = _to_data(ckpt.get("args"))
    return ckpt


# ---- config -------------------------------------------------------------------------------------
_RELEASE_ARGS = {
    "img_size",
    "patch_size",
    "mask_ratio",
    "mlp_ratio",
    "embed_dim",
    "depth",
    "num_heads",
    "decoder_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
    "encoder_plusplus_block",
    "decoder_plusplus_block",
    "encoder_use_swiglu_final_ffn",
    "decoder_use_swiglu_final_ffn",
    "encoder_use_rope",
    "decoder_use_rope",
    "use_cls_token",
    "norm_pix_loss",
    "in_chans",
}


def config_from_release_args(args: dict[str, Any]) -> AudioMAEConfig:
    """Map the release's model arguments (its own names) to an :class:`AudioMAEConfig`.

    The result records the release's quirks: ``swiglu_norm="ln2"``, RoPE over sequence positions,
    and the ``release`` token layout for embeddings.
    """
    unknown = set(args) - _RELEASE_ARGS
    if unknown:
        raise CheckpointError(f"release config: unknown argument(s) {sorted(unknown)}")
    if not args.get("use_cls_token", True):
        raise CheckpointError(
            "release config: use_cls_token=False is not supported (every release uses cls)"
        )
    for side in ("encoder", "decoder"):
        if args.get(f"{side}_plusplus_block", True) and not args.get(
            f"{side}_use_swiglu_final_ffn", True
        ):
            raise CheckpointError(
                f"release config: {side}_use_swiglu_final_ffn=False is not supported "
                "(no released model uses it)"
            )

    def block(side: str) -> str:
        return "plusplus" if args.get(f"{side}_plusplus_block", True) else "vanilla"

    def rope(side: str) -> str:
        return "sequence" if args.get(f"{side}_use_rope", False) else "none"

    fields = {
        k: args[k]
        for k in (
            "img_size",
            "patch_size",
            "mask_ratio",
            "mlp_ratio",
            "embed_dim",
            "depth",
            "num_heads",
            "decoder_embed_dim",
            "decoder_depth",
            "decoder_num_heads",
            "norm_pix_loss",
            "in_chans",
        )
        if k in args
    }
    return AudioMAEConfig(
        **fields,
        block=block("encoder"),
        decoder_block=block("decoder"),
        encoder_rope=rope("encoder"),
        decoder_rope=rope("decoder"),
        swiglu_norm="ln2",
        token_layout="release",
        extra={"source": "release", "release_args": dict(args)},
    )


def _embedded_model_args(ckpt_args: Any) -> dict[str, Any] | None:
    """``args.config.model.model_args`` of a release checkpoint, when present."""
    try:
        return dict(ckpt_args["config"]["model"]["model_args"])
    except (KeyError, TypeError):
        return None


# ---- state dict ----------------------------------------------------------------------------------
_RENAMES = [  # (release pattern, our name), applied in order
    (r"^cls_token$", "encoder.cls_token"),
    (r"^patch_embed\.", "encoder.patch_embed."),
    (r"^encoder\.encoder_norm\.", "encoder.norm."),
    (r"^decoder\.decoder_(embed|norm|pred|pos_embed|blocks)", r"decoder.\1"),
    (r"\.ffn1\.layer1\.", ".ffn1.fc1."),
    (r"\.ffn1\.layer2\.", ".ffn1.fc2."),
    (r"\.mlp\.layer1\.", ".mlp.fc1."),
    (r"\.mlp\.layer2\.", ".mlp.fc2."),
    (r"\.attn\.qkv_layer\.", ".attn.qkv."),
    (r"\.attn\.proj_layer\.", ".attn.proj."),
    (r"\.ffn2\.linear1\.", ".ffn2.value."),
    (r"\.ffn2\.linear2\.", ".ffn2.gate."),
    (r"\.ffn2\.ln\.", ".ffn2.norm."),
    (r"\.ffn2\.project\.", ".ffn2.proj."),
]


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def convert_release_state_dict(
    state: dict[str, torch.Tensor], model: AudioMAE, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename release keys to ours; RoPE frequency tables are checked against ours, then dropped."""
    from .io import check_state_dict

    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise CheckpointError(
                f"{source}: key {key!r} holds {type(value).__name__}, not a tensor"
            )
        if key.endswith("rope.freqs"):
            _check_rope_table(key, value, model, source)
            continue
        out[_rename(key)] = value.float() if value.is_floating_point() else value
    check_state_dict(model, out, source)
    return out


def _check_rope_table(key: str, value: torch.Tensor, model: AudioMAE, source: str) -> None:
    side = "encoder" if key.startswith("encoder.") else "decoder"
    cfg = model.config
    mode = cfg.encoder_rope if side == "encoder" else cfg.decoder_rope
    if mode == "none":
        raise CheckpointError(f"{source}: unexpected key {key!r} (the config has no {side} RoPE)")
    heads = cfg.num_heads if side == "encoder" else cfg.decoder_num_heads
    width = cfg.embed_dim if side == "encoder" else cfg.decoder_embed_dim
    ours = rope_freqs(width // heads)
    if value.numel() != ours.numel() or not torch.allclose(
        value.float().flatten(), ours, rtol=1e-5
    ):
        raise CheckpointError(
            f"{source}: key {key!r} is not the RoPE table (base 10000) we compute"
        )


# ---- whole conversion ----------------------------------------------------------------------------
def convert_release(
    checkpoint: str | Path,
    out_dir: str | Path,
    preset: str | None = None,
    release_config: str | Path | dict[str, Any] | None = None,
) -> AudioMAE:
    """Convert a release checkpoint into a model directory for :meth:`AudioMAE.from_pretrained`.

    The architecture comes from ``release_config`` (a JSON file or dict in the release's argument
    names), else ``preset`` (an AudioMAE++ size with the release's quirks), else the config the
    checkpoint carries in ``args.config.model.model_args``.
    """
    ckpt = load_release_checkpoint(checkpoint)
    if release_config is not None:
        args = release_config
        if not isinstance(args, dict):
            try:
                args = json.loads(Path(args).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CheckpointError(
                    f"{release_config}: cannot read release config ({exc})"
                ) from exc
        cfg = config_from_release_args(args)
    elif preset is not None:
        cfg = AudioMAEConfig.preset(
            preset,
            swiglu_norm="ln2",
            token_layout="release",
            extra={"source": "release", "preset": preset},
        )
    else:
        args = _embedded_model_args(ckpt.get("args"))
        if args is None:
            raise CheckpointError(
                f"{checkpoint}: the checkpoint carries no model arguments; "
                "pass --preset or --release-config"
            )
        cfg = config_from_release_args(args)
    cfg.extra["checkpoint"] = Path(checkpoint).name
    cfg.extra["epoch"] = ckpt.get("epoch")
    model = AudioMAE(cfg)
    state = convert_release_state_dict(ckpt["model"], model, source=str(checkpoint))
    model.load_state_dict(state)
    model.eval()
    model.save_pretrained(out_dir)
    return model
