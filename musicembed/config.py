"""Model configuration: one dataclass tree, saved as ``config.json`` beside the weights.

The config carries the frontend settings too, so weights and the preprocessing they were
trained with can never drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .windows import MartLevel, mart_levels

# 2: FrontendConfig.normalize, EncoderConfig.ceil_pools and time_pool (absent in 1, read as
# their defaults, which compute what format 1 computed).
FORMAT_VERSION = 2
NORMALIZE_MODES = ("none", "window", "center")
TIME_POOLS = ("max", "mean")
FREQ_POOLS = ("flatten", "max", "mean")
MEL_SCALES = ("htk", "slaney", "log")
MIN_MODEL_SAMPLE_RATE = 1000  # Hz
MAX_MODEL_SAMPLE_RATE = 768_000  # Hz
MAX_WINDOW_SECONDS = 3600.0  # a longer window would zero-pad every shorter file to its length

# Per-field checks: value -> None when fine, else the reason. Each validate() below maps its
# fields to checks; a field without one still gets the check of its annotated type.


def _between(lo: float, hi: float):
    def check(v) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"
    return check


def _one_of(*allowed):
    def check(v) -> str | None:
        return None if v in allowed else f"must be one of {', '.join(map(repr, allowed))}"
    return check


def _type_problem(value: Any, hint: Any) -> str | None:
    """Whether ``value`` is of the annotated type (int, float, bool, str, ``X | None``, list[...])."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _type_problem(value, rest[0]) if len(rest) == 1 else None
    if origin is list:
        if not isinstance(value, list) or not value:
            return "must be a non-empty list"
        return next((f"item {i}: {p}" for i, x in enumerate(value) if (p := _type_problem(x, args[0]))), None)
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        return None if math.isfinite(value) else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    return None  # nested configs check themselves


def _validate(obj: Any, where: str, prefix: str, checks: dict[str, Any]) -> None:
    """Raise ValueError ``WHERE: PREFIX.FIELD = VALUE: REASON`` for the first field that fails."""
    import typing

    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _type_problem(value, hints[f.name])
        if problem is None and f.name in checks and value is not None:
            problem = checks[f.name](value)
        if problem:
            raise ValueError(_at(where, f"{prefix}{f.name} = {_short(value)}: {problem}"))


def _at(where: str, text: str) -> str:
    """An error message, prefixed with where it comes from (a file) when known."""
    return f"{where}: {text}" if where else text


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (int, float, str, list, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class FrontendConfig:
    """Log-mel frontend. Sample rates in Hz, lengths in samples."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist of ``filterbank_sample_rate``
    # "htk" or "slaney": mel bands. "log": n_mels triangular bands evenly spaced in log frequency
    # from f_min (> 0) to f_max, n_mels / log2(f_max / f_min) bands per octave, so a change of key
    # shifts the spectrum along the band axis (pair with encoder.freq_pool "max" or "mean").
    mel_scale: str = "htk"
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
    # input moves nothing. "center": zero mean only (a gain still moves nothing; the dB range is
    # kept). "none": the dB values as computed (converted official checkpoints).
    normalize: str = "none"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"frontend.normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")

    def validate(self, where: str = "") -> None:
        """Raise ValueError naming the field (and ``where``, e.g. the file) for an unusable value."""
        nyquist = (self.filterbank_sample_rate or self.sample_rate) / 2 if isinstance(
            self.filterbank_sample_rate or self.sample_rate, int) else math.inf
        _validate(self, where, "frontend.", {
            "sample_rate": _between(MIN_MODEL_SAMPLE_RATE, MAX_MODEL_SAMPLE_RATE),
            "n_fft": _between(2, 1 << 16),
            "hop_length": _between(1, 1 << 16),
            "n_mels": _between(1, 1024),
            "f_min": _between(0, nyquist),
            "f_max": _between(0, nyquist),
            "mel_scale": _one_of(*MEL_SCALES),
            "mel_norm": _one_of(None, "slaney"),
            "filterbank_sample_rate": _between(MIN_MODEL_SAMPLE_RATE, MAX_MODEL_SAMPLE_RATE),
            "amin": _between(1e-30, 1.0),
            "top_db": _between(1e-3, 1e4),
            "normalize": _one_of(*NORMALIZE_MODES),
        })
        if self.f_max is not None and self.f_max <= self.f_min:
            raise ValueError(_at(where, f"frontend.f_max = {self.f_max:g}: must be above f_min ({self.f_min:g})"))
        if self.mel_scale == "log" and not self.f_min > 0:
            raise ValueError(_at(where, f"frontend.f_min = {self.f_min:g}: must be above 0 for mel_scale \"log\""))
        if self.mel_scale == "log" and self.mel_norm is not None:
            raise ValueError(_at(where, f"frontend.mel_norm = {self.mel_norm!r}: must be null for mel_scale \"log\" "
                                        "(its bands have peak 1)"))


@dataclass
class EncoderConfig:
    """Fully convolutional encoder (FCN-4 / FCN-7 of Choi et al.): conv3x3-BN-ReLU-MaxPool blocks.

    ``pools`` are (frequency, time) max-pool sizes per block. With ``ceil_pools`` a pool also
    covers the rows and frames left over at the end (ceil mode), so every frame reaches the
    output; without it they are dropped (floor mode, the authors' FCN). Whatever time steps
    remain after the last block are pooled by ``time_pool`` ("max" or "mean"). The remaining
    frequency rows are flattened (``freq_pool="flatten"``: output size
    ``channels[-1] * ceil_or_floor(n_mels / prod(freq pools))``) or max- or mean-pooled
    (``"max"``, ``"mean"``: output size ``channels[-1]``; on a log-frequency input the vector then
    hardly moves when the music is transposed).
    """

    arch: str = "fcn4"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    pools: list[list[int]] = field(default_factory=lambda: [[2, 4], [2, 4], [2, 4], [4, 2]])
    input_bn: bool = True
    ceil_pools: bool = False
    time_pool: str = "max"
    freq_pool: str = "flatten"

    def __post_init__(self) -> None:
        if self.time_pool not in TIME_POOLS:
            raise ValueError(f"encoder.time_pool must be one of {TIME_POOLS}, got {self.time_pool!r}")
        if self.freq_pool not in FREQ_POOLS:
            raise ValueError(f"encoder.freq_pool must be one of {FREQ_POOLS}, got {self.freq_pool!r}")

    def validate(self, where: str = "") -> None:
        """Raise ValueError naming the field (and ``where``, e.g. the file) for an unusable value."""
        _validate(self, where, "encoder.", {
            "channels": lambda v: None if len(v) <= 32 and all(1 <= c <= 4096 for c in v)
            else "must be 1 to 32 blocks of 1 to 4096 channels",
            "pools": lambda v: None if len(v) == len(self.channels) and all(len(q) == 2 and all(1 <= k <= 64 for k in q)
                                                                          for q in v)
            else "must be one [frequency, time] pair of sizes 1..64 per block of channels",
            "time_pool": _one_of(*TIME_POOLS),
            "freq_pool": _one_of(*FREQ_POOLS),
        })


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

    def validate(self, where: str = "") -> None:
        """Raise ValueError naming the field (and ``where``, e.g. the file) for an unusable value."""
        _validate(self, where, "mart.", {
            "levels": _between(1, 12),
            "parts": lambda v: None if 1 <= v and v ** max(self.levels - 1, 0) <= 4096
            else "must be at least 1, with parts ** (levels - 1) at most 4096 clips",
            "frames": _between(1, 1 << 16),
            "pwt_layers": _between(0, 64),
            "heads": _between(1, 64),
            "head_dim": _between(1, 4096),
            "ff_dim": _between(1, 1 << 16),
            "dropout": _between(0, 0.99),
            "lambda_whole": _between(-1e3, 1e3),
            "lambda_part": _between(-1e3, 1e3),
        })


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

    def validate(self, where: str = "") -> None:
        """Check every field of this config and its sections; raise ValueError naming the field and ``where``."""
        for section, cls in (("frontend", FrontendConfig), ("encoder", EncoderConfig), ("mart", MartConfig)):
            value = getattr(self, section)
            if not isinstance(value, cls) and not (section == "mart" and value is None):
                raise ValueError(_at(where, f"{section} must be an object of {cls.__name__} settings"))
            if value is not None:
                value.validate(where)
        rate = self.frontend.sample_rate
        _validate(self, where, "", {
            "method": _one_of("pemr", "mart"),
            "window_samples": _between(1, MAX_WINDOW_SECONDS * rate),
        })
        try:
            _ = self.embedding_dim
        except ValueError as e:
            raise ValueError(_at(where, f"encoder.pools: {e} ({self.frontend.n_mels} mel bands)")) from None

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
        return self.encoder.channels[-1] * (freq if self.encoder.freq_pool == "flatten" else 1)

    def mart_levels(self, samples: int | None = None) -> list[MartLevel]:
        """MART's level geometry (:func:`musicembed.windows.mart_levels`) for a window of
        ``samples`` (default ``window_samples``)."""
        if self.mart is None:
            raise ValueError("mart_levels: not a MART config")
        samples = self.window_samples if samples is None else samples
        return mart_levels(samples, self.mart.levels, self.mart.parts, self.mart.frames)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Written only when it pools: a config with flattened rows then reads in releases
        # without the option and keeps its fingerprint (Model.fingerprint hashes this dict).
        if d["encoder"]["freq_pool"] == "flatten":
            del d["encoder"]["freq_pool"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> ModelConfig:
        """Build and :meth:`validate` a config; errors name ``where`` (e.g. the file) and the field."""
        d = dict(d)
        version = d.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(_at(where, f"format_version = {_short(version)}: must be an integer"))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"config format {version} is newer than this musicembed understands "
                f"({FORMAT_VERSION}); upgrade musicembed"
            )
        d.pop("format_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(_at(where, f"unknown config keys: {sorted(unknown)}"))
        frontend = _section(FrontendConfig, d.pop("frontend", {}), "frontend", where)
        encoder = _section(EncoderConfig, d.pop("encoder", {}), "encoder", where)
        mart = d.pop("mart", None)
        mart = _section(MartConfig, mart, "mart", where) if mart else None
        cfg = cls(frontend=frontend, encoder=encoder, mart=mart, **d)
        cfg.validate(where)
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _section(cls: type, d: Any, name: str, where: str) -> Any:
    """A validated config section from its JSON object (a wrong shape or unknown keys are errors too)."""
    if not isinstance(d, dict):
        raise ValueError(_at(where, f"{name} must be an object of settings, got {type(d).__name__}"))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(_at(where, f"unknown {name} keys: {unknown}"))
    section = cls(**d)
    section.validate(where)
    return section
