"""Model configuration: one typed dataclass with the paper's named presets (spec §2-§5)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from ..frontend import INPUT_FRAMES, FrontendConfig
from ..settings import knob

BlockType = Literal["plusplus", "vanilla"]
RopeMode = Literal["none", "sequence", "grid"]
SwigluNorm = Literal["ln2", "ln3"]
TokenLayout = Literal["time_major", "release"]

# name -> (encoder depth, heads, width, decoder width); decoders have 4 blocks of 8 heads (spec §4).
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny": (12, 3, 192, 384),
    "small": (12, 6, 384, 384),
    "medium": (12, 8, 512, 384),
    "base": (12, 12, 768, 384),
    "large": (24, 16, 1024, 512),
    "huge": (32, 16, 1280, 384),
}

# Bounds checked before any allocation (a config.json is untrusted input). The upper bounds are
# ~4x the largest preset (huge: 32 blocks, 1280 wide), generous for research yet far below sizes
# that would exhaust memory while building the model.
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "in_chans": (1, 16),
    "embed_dim": (1, 8192),
    "depth": (1, 128),
    "num_heads": (1, 256),
    "decoder_embed_dim": (1, 8192),
    "decoder_depth": (1, 128),
    "decoder_num_heads": (1, 256),
}
# The one input geometry (time frames, mel bins), owned by the front end. ``img_size`` must equal
# it: every path that feeds the model (loader crops, fine-tuning windows, embedding chunks) cuts
# INPUT_FRAMES-frame windows, so another size could be built but never trained or embedded.
INPUT_GEOMETRY = (INPUT_FRAMES, FrontendConfig().n_mels)
_MAX_SIDE = 100_000  # frames or mel bins of one input: 1000 s at 100 frames/s
_MAX_MLP_RATIO = 64.0  # FFN width / model width; the recipe uses 4
_MAX_PATCHES = 65_536  # tokens per input (the recipe has 250): attention is quadratic in it


@dataclass
class AudioMAEConfig:
    """Every architectural choice of an AudioMAE / AudioMAE++ model.

    Defaults are AudioMAE++-Base as released; use :meth:`preset` for the other sizes.
    """

    img_size: tuple[int, int] = knob(
        INPUT_GEOMETRY,
        "2 s x 80 mel bins, time first; fixed by the front end (INPUT_FRAMES, n_mels)",
    )
    patch_size: tuple[int, int] = knob((4, 16), "40 ms x 16 bins: a 50 x 5 grid of 250 patches")
    in_chans: int = knob(1, "log-mel has one channel")
    embed_dim: int = knob(768, "encoder width D (base)")
    depth: int = knob(12, "encoder blocks (base)")
    num_heads: int = knob(12, "encoder heads (base): head dim 64")
    decoder_embed_dim: int = knob(384, "decoder width for tiny/base (512 for large, the best)")
    decoder_depth: int = knob(4, "the paper's decoder is always 4 blocks")
    decoder_num_heads: int = knob(8, "... of 8 heads")
    mlp_ratio: float = knob(4.0, "FFN hidden = 4 D (SwiGLU: int(4 D * 2/3), the same budget)")
    mask_ratio: float = knob(0.8, "80 % of patches removed during pretraining")
    block: BlockType = knob("plusplus", "plusplus: macaron transformer++ block; vanilla: MAE's")
    decoder_block: BlockType | None = knob(None, "None: the same block type as the encoder")
    encoder_rope: RopeMode = knob("none", "RoPE hurt in the paper (Table 3), so it is off")
    decoder_rope: RopeMode = knob("none", "sequence: the release's positions; grid: true ones")
    swiglu_norm: SwigluNorm = knob("ln2", "ln2: the release feeds LN2's output to the SwiGLU")
    norm_pix_loss: bool = knob(False, "the release's default: plain MSE on standardised log-mel")
    token_layout: TokenLayout = knob(
        "time_major", "grouping of tokens into timestamp embeddings (spec §7)"
    )
    extra: dict[str, Any] = knob({}, "provenance (e.g. converted release args)")

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size"):  # JSON gives lists
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ValueError(
                    f"AudioMAEConfig.{name} must be two integers (time, mel), got {value!r}"
                )
            setattr(self, name, tuple(value))
        if self.decoder_block is None:
            self.decoder_block = self.block
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field.

        Called from ``__post_init__``, i.e. before any weight is allocated, so a hostile or mistyped
        ``config.json`` fails here with the field's name instead of deep inside a layer (a zero
        divisor, an IndexError, an empty model or a multi-terabyte allocation).
        """
        self._check_types_and_bounds()
        if tuple(self.img_size) != INPUT_GEOMETRY:
            raise ValueError(
                f"AudioMAEConfig.img_size={list(self.img_size)}; the model input is fixed at "
                f"{list(INPUT_GEOMETRY)} (time, mel): the front end makes "
                f"{INPUT_GEOMETRY[1]} mel bins, and pretraining crops, fine-tuning windows and "
                f"embedding chunks are all {INPUT_GEOMETRY[0]} frames (INPUT_FRAMES)"
            )
        choices = {
            "block": ("plusplus", "vanilla"),
            "decoder_block": ("plusplus", "vanilla"),
            "encoder_rope": ("none", "sequence", "grid"),
            "decoder_rope": ("none", "sequence", "grid"),
            "swiglu_norm": ("ln2", "ln3"),
            "token_layout": ("time_major", "release"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"AudioMAEConfig.{name}={getattr(self, name)!r}; choose from {allowed}"
                )
        for dim, heads, what in (
            (self.embed_dim, self.num_heads, "embed_dim/num_heads"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim/decoder_num_heads"),
        ):
            if dim % heads:
                raise ValueError(
                    f"AudioMAEConfig.{what}: width {dim} is not divisible by {heads} heads"
                )
            if (self.encoder_rope != "none" or self.decoder_rope != "none") and (dim // heads) % 2:
                raise ValueError(
                    f"AudioMAEConfig.{what}: RoPE needs an even head dim, got {dim // heads}"
                )
        for i in range(2):
            if self.img_size[i] % self.patch_size[i]:
                raise ValueError(
                    f"AudioMAEConfig.img_size {self.img_size} is not a multiple of "
                    f"patch_size {self.patch_size}"
                )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"AudioMAEConfig.mask_ratio={self.mask_ratio}; must be in [0, 1)")
        if self.num_patches > _MAX_PATCHES:
            raise ValueError(
                f"AudioMAEConfig.img_size {list(self.img_size)} / "
                f"patch_size {list(self.patch_size)} "
                f"give {self.num_patches} patches; at most {_MAX_PATCHES}"
            )
        if self.num_keep < 1:
            raise ValueError(
                f"AudioMAEConfig.mask_ratio={self.mask_ratio} keeps no patch of {self.num_patches}"
            )

    def _check_types_and_bounds(self) -> None:
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"AudioMAEConfig.{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"AudioMAEConfig.{name}={value}; must be in [{low}, {high}]")
        for name in ("img_size", "patch_size"):
            value = getattr(self, name)
            if len(value) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ValueError(
                    f"AudioMAEConfig.{name} must be two integers (time, mel), got {list(value)}"
                )
            if not all(1 <= v <= _MAX_SIDE for v in value):
                raise ValueError(
                    f"AudioMAEConfig.{name}={list(value)}; each side must be in [1, {_MAX_SIDE}]"
                )
        ratio = self.mlp_ratio
        if (
            not isinstance(ratio, (int, float))
            or isinstance(ratio, bool)
            or not 0 < ratio <= _MAX_MLP_RATIO
        ):
            raise ValueError(
                f"AudioMAEConfig.mlp_ratio={ratio!r}; must be a number in (0, {_MAX_MLP_RATIO}]"
            )
        if not isinstance(self.mask_ratio, (int, float)) or isinstance(self.mask_ratio, bool):
            raise ValueError(f"AudioMAEConfig.mask_ratio must be a number, got {self.mask_ratio!r}")
        if not isinstance(self.norm_pix_loss, bool):
            raise ValueError(
                f"AudioMAEConfig.norm_pix_loss must be true or false, got {self.norm_pix_loss!r}"
            )
        if not isinstance(self.extra, dict):
            raise ValueError(
                f"AudioMAEConfig.extra must be an object, got {type(self.extra).__name__}"
            )

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along (time, frequency): (50, 5)."""
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def patch_dim(self) -> int:
        """Values per patch: 4 x 16 = 64."""
        return self.patch_size[0] * self.patch_size[1] * self.in_chans

    @property
    def num_keep(self) -> int:
        """Patches kept by masking: ``int(L * (100 - ratio*100) / 100)`` = 50, as in the release."""
        return int(self.num_patches * (100 - self.mask_ratio * 100) / 100)

    # ---- presets and (de)serialisation ----------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AudioMAEConfig:
        """A named size (tiny, small, medium, base, large, huge) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        depth, heads, dim, dec_dim = PRESETS[name]
        base = dict(embed_dim=dim, depth=depth, num_heads=heads, decoder_embed_dim=dec_dim)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown AudioMAEConfig field(s): {sorted(unknown)}")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"], d["patch_size"] = list(self.img_size), list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioMAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict):
            raise ValueError(f"an AudioMAEConfig must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AudioMAEConfig field(s): {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
