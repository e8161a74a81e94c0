"""A training run's configuration (saved as ``RUN_DIR/run.json``).

``--config`` values are applied in order: a preset name (``default`` or ``tiny``, both in
:mod:`musicembed.presets`), a path to a JSON file or an inline JSON object. An object's keys
are :class:`~musicembed.config.ModelConfig` fields (nested dicts merge into nested configs), plus optional
``objective`` and ``augment``
sections for the loss and augmentation options.

``--init-from MODEL`` starts a run from the weights of an exported model (a manifest name, a
folder or ``hf-hub:...``, as for ``load_model``): its config.json is the base the overrides
apply to, and the run records the model and the sha256 of its weights.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .. import hub
from ..config import ModelConfig
from ..presets import TINY, mart_config, pemr_config
from .augment import AugmentConfig
from .objectives import MARTObjectiveConfig, PEMRObjectiveConfig, objective_defaults

RUN_FILE = "run.json"

@dataclass
class TrainConfig:
    """Everything that determines a run. ``batch_size`` is per process (global = batch_size x
    processes); ``steps`` caps the total optimizer steps, ``epochs`` too."""

    method: str
    data: str
    out: str
    model: dict[str, Any]
    objective: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    epochs: int = 300
    steps: int | None = None
    batch_size: int = 48
    lr: float = 3e-4
    weight_decay: float = 1e-6
    lr_decay_from: int | None = None  # from this step on, lr follows a half cosine down to 0 at ``steps``
    workers: int = 2
    augment_in: str = "device"  # or "workers" (loop.augment_place)
    align_versions: bool = False  # views of a piece's versions from one point of the score (data.CropDataset)
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    device: str = "auto"
    cache_dir: str | None = None
    progress: bool = True
    init_from: dict[str, str] | None = None  # {"model": reference, "sha256": of its weights}

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    def save(self, run_dir: Path) -> None:
        (run_dir / RUN_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a training run folder (no {RUN_FILE})")
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown run settings {unknown} (written by a newer musicembed?)")
        return cls(**raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read_override(text: str, method: str) -> dict[str, Any]:
    if text == "default":
        return {}
    if text == "tiny":
        return TINY[method]
    path = Path(text)
    if not text.lstrip().startswith("{") and path.is_file():
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {text[:60]!r}: not a preset (default, tiny), a JSON file or JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("--config JSON must be an object")
    return value


def init_weights(ref: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """(model config dict, state dict, record for ``TrainConfig.init_from``) of the exported
    model ``ref``, verified by its sha256 like ``load_model`` does."""
    resolved = hub.resolve(ref)
    record = {"model": ref, "sha256": hub.sha256_file(resolved.weights)}
    model = resolved.config.to_dict()
    for own in ("version", "description"):  # what the base says of itself, not of the new run's weights
        model.pop(own, None)
    return model, hub.load_state_dict(resolved), record


def resolve(
    method: str, overrides: list[str], crop_seconds: float | None = None, base: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model config dict, objective options, augmentation options) from ``base`` (a model
    config dict; default: the project's preset for ``method``), the ``--config`` overrides in
    order and ``--crop-seconds`` (sets the model window)."""
    model = copy.deepcopy(base) if base is not None else (pemr_config() if method == "pemr" else mart_config()).to_dict()
    objective = objective_defaults(method)
    augment = asdict(AugmentConfig())
    for text in overrides:
        over = dict(_read_override(text, method))
        objective = _merge(objective, over.pop("objective", {}))
        augment = _merge(augment, over.pop("augment", {}))
        model = _merge(model, over)
    if crop_seconds is not None:
        model["window_samples"] = round(crop_seconds * model["frontend"]["sample_rate"])
    cfg = ModelConfig.from_dict(model)  # validate everything before any work starts
    if cfg.method != method:
        raise ValueError(f"--config sets method {cfg.method!r} for a {method} run")
    _ = cfg.embedding_dim  # raises when the pools reduce the mel axis to nothing
    if cfg.mart is not None:
        for lv in cfg.mart_levels():
            if lv.hop > cfg.frontend.n_fft:
                raise ValueError(f"MART level {lv.level}: hop {lv.hop} exceeds n_fft {cfg.frontend.n_fft}, so its "
                                 "frames would skip samples; raise frontend.n_fft or mart.frames")
    (PEMRObjectiveConfig if method == "pemr" else MARTObjectiveConfig)(**objective)
    AugmentConfig.from_dict(augment)
    return model, objective, augment
