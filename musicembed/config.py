"""Model configuration: one dataclass tree, saved as ``config.json`` beside the weights.

The config carries the frontend settings too, so weights and the preprocessing they were
trained with can never drift apart.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# 2: FrontendConfig.normalize, EncoderConfig.ceil_pools and time_pool (absent in 1, read as
# their defaults, which compute what format 1 computed).
FORMAT_VERSION = 2
NORMALIZE_MODES = ("none", "window")
TIME_POOLS = ("max", "mean")


@dataclass
class FrontendConfig:
    """Log-mel frontend. Sample rates in Hz, lengths in samples."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist of ``filterbank_sample_rate``
    mel_scale: str = "htk"  # "htk" or "slaney"
    mel_norm: str | None = None  # None or "slaney"
    # Rate the mel filterbank is designed for. None means ``sample_rate``. The PEMR
    # authors' code builds its filterbank for 16 kHz and applies it to 22.05 kHz audio;
    # converted official checkpoints set this to 16000 to reproduce that exactly.
    filterbank_sample_rate: int | None = None
    allow_empty_filters: bool = False  # only for reproducing the official checkpoint
    amin: float = 1e-10  # floor of the power before 10*log10
    top_db: float | None = None
    center: bool = True
    # "window": every log-mel the encoder sees (a PEMR window, a MART clip of any level) is
    # standardised to zero mean and unit variance over all its bins, so a gain change of the
    # input moves nothing. "none": the dB values as computed (converted official checkpoints).
    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"frontend.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")


@dataclass
class EncoderConfig:
    """Fully convolutional encoder (FCN-4 / FCN-7 of Choi et al.): conv3x3-BN-ReLU-MaxPool blocks.

    ``pools`` are (frequency, time) max-pool sizes per block. With ``ceil_pools`` a pool also
    covers the rows and frames left over at the end (ceil mode), so every frame reaches the
    output; without it they are dropped (floor mode, the authors' FCN). Whatever time steps
    remain after the last block are pooled by ``time_pool`` ("max" or "mean"); the remaining
    frequency rows are flattened, so the output size is
    ``channels[-1] * ceil_or_floor(n_mels / prod(freq pools))``.
    """

    arch: str = "fcn4"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    pools: list[list[int]] = field(default_factory=lambda: [[2, 4], [2, 4], [2, 4], [4, 2]])
    input_bn: bool = True
    ceil_pools: bool = False
    time_pool: str = "max"

    def __post_init__(self) -> None:
        if self.time_pool not in TIME_POOLS:
            raise ValueError(f"encoder.time_pool must be one of {TIME_POOLS}, got {self.time_pool!r}")


@dataclass
class MartConfig:
    """MART hierarchy and part-whole transformer.

    The level-0 clip is split into ``parts`` equal parts, recursively, for ``levels``
    levels; every clip is turned into a log-mel of ``frames`` frames by scaling the hop.
    """

    levels: int = 4
    parts: int = 2
    frames: int = 64
    use_pwt: bool = True  # ablation "w/o PWT" sets False
    pwt_layers: int = 3
    share_levels: bool = True  # one interaction unit per layer, shared by all level pairs
    heads: int = 3
    head_dim: int | None = 64  # None: embedding_dim // heads
    ff_dim: int = 512
    dropout: float = 0.1
    lambda_whole: float = 1.0  # lambda^n in eq. (1): weight of the parts' message to a whole
    lambda_part: float = 1.0  # lambda^(n+1) in eq. (2): weight of the whole's message to a part


@dataclass(frozen=True)
class MartLevel:
    """One level of MART's hierarchy inside a window: ``count`` clips of ``clip`` samples, each
    turned into ``frames`` log-mel frames with an STFT hop of ``hop`` samples."""

    level: int
    count: int
    clip: int
    hop: int


@dataclass
class ModelConfig:
    """Everything needed to rebuild an inference model from ``model.safetensors``."""

    method: str = "pemr"  # "pemr" or "mart"
    name: str = "pemr"
    version: str = "0"
    window_samples: int = 48000  # PEMR: crop length; MART: level-0 clip length
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mart: MartConfig | None = None
    description: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.method not in ("pemr", "mart"):
            raise ValueError(f"unknown method {self.method!r} (expected 'pemr' or 'mart')")
        if self.method == "mart" and self.mart is None:
            self.mart = MartConfig()
        if len(self.encoder.channels) != len(self.encoder.pools):
            raise ValueError("encoder.channels and encoder.pools must have the same length")

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.frontend.sample_rate

    @property
    def embedding_dim(self) -> int:
        freq = self.frontend.n_mels
        for f, _ in self.encoder.pools:
            freq = -(-freq // f) if self.encoder.ceil_pools else freq // f
        if freq < 1:
            raise ValueError("encoder pools reduce the mel axis to nothing")
        return self.encoder.channels[-1] * freq

    def mart_levels(self, samples: int | None = None) -> list[MartLevel]:
        """MART's level geometry for a window of ``samples`` (default ``window_samples``): level n
        cuts it into parts^n equal clips and uses hop clip // frames, so every level gives the
        same frame count (samples past ``count * clip`` are not used)."""
        if self.mart is None:
            raise ValueError("mart_levels: not a MART config")
        mc = self.mart
        samples = self.window_samples if samples is None else samples
        out = []
        for n in range(mc.levels):
            count = mc.parts**n
            clip = samples // count
            hop = clip // mc.frames
            if hop < 1:
                raise ValueError(f"MART window of {samples} samples is too short for {mc.levels} levels "
                                 f"of {mc.frames} frames")
            out.append(MartLevel(n, count, clip, hop))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(
                f"config format {version} is newer than this musicembed understands "
                f"({FORMAT_VERSION}); upgrade musicembed"
            )
        d.pop("format_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        frontend = FrontendConfig(**d.pop("frontend", {}))
        encoder = EncoderConfig(**d.pop("encoder", {}))
        mart = d.pop("mart", None)
        return cls(frontend=frontend, encoder=encoder, mart=MartConfig(**mart) if mart else None, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def pemr_config(**overrides: Any) -> ModelConfig:
    """The project's PEMR inference config: FCN-4 on 3-s windows at 16 kHz, 512-d output.

    64 mel bands at a 32-ms hop (94 frames per window), standardised per window; 32/64/128/256
    channels; ceil-mode pools and a mean over the remaining time steps, so every frame of a
    window reaches its vector.
    """
    cfg = ModelConfig(
        method="pemr",
        name="pemr",
        window_samples=48000,
        frontend=FrontendConfig(n_fft=1024, hop_length=512, n_mels=64, normalize="window"),
        encoder=EncoderConfig(
            channels=[32, 64, 128, 256], pools=[[2, 4], [2, 2], [2, 2], [4, 1]], ceil_pools=True, time_pool="mean"
        ),
    )
    return dataclasses.replace(cfg, **overrides)


def mart_config(**overrides: Any) -> ModelConfig:
    """The project's MART inference config: FCN-7 on a 4.096-s clip, 4 levels of 2 parts, 512-d.

    Every clip of every level becomes a 64-band x 32-frame log-mel standardised on its own;
    the 2048-point FFT is as long as the longest hop (2048 samples at level 0), so no level's
    frames skip samples.
    """
    cfg = ModelConfig(
        method="mart",
        name="mart",
        window_samples=65536,
        frontend=FrontendConfig(n_fft=2048, hop_length=512, n_mels=64, normalize="window"),
        encoder=EncoderConfig(
            arch="fcn7",
            channels=[16, 32, 64, 128, 128, 256, 512],
            pools=[[2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 1], [2, 1]],
            ceil_pools=True,
            time_pool="mean",
        ),
        mart=MartConfig(frames=32),
    )
    return dataclasses.replace(cfg, **overrides)
