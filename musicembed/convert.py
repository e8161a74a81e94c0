"""Convert the PEMR authors' released checkpoint into musicembed's format.

The authors (github.com/yaoodng7/PEMR) publish a PyTorch Lightning ``.ckpt``: a pickle.
It is read with ``torch.load(weights_only=True)``; Lightning checkpoints that also pickle
their hyper-parameters (an argparse Namespace or Lightning AttributeDict) are read with a
restricted unpickler that only rebuilds tensors and plain containers and turns every other
object into an inert placeholder, so no code from the file can run.

Only the encoder is kept. Its frontend is reproduced exactly as their code computes it:
22.05 kHz audio, ``MelSpectrogram(n_fft=256, hop_length=128, n_mels=128)`` built without a
sample rate (so a 16 kHz filterbank, with its empty filters, is applied to 22.05 kHz audio),
``AmplitudeToDB()``, and fixed windows of 59,049 samples.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .config import EncoderConfig, FrontendConfig, ModelConfig
from .errors import WeightsError
from .hub import save_pretrained
from .models import build_model

OFFICIAL_WINDOW = 59049


def pemr_official_config() -> ModelConfig:
    """The authors' encoder and preprocessing, quirks included (see module docstring)."""
    return ModelConfig(
        method="pemr",
        name="pemr-official",
        version="authors-release",
        window_samples=OFFICIAL_WINDOW,
        frontend=FrontendConfig(
            sample_rate=22050, n_fft=256, hop_length=128, n_mels=128,
            filterbank_sample_rate=16000, allow_empty_filters=True,
        ),
        encoder=EncoderConfig(
            arch="fcn4", channels=[64, 128, 128, 128], pools=[[2, 4], [2, 4], [2, 4], [4, 5]], input_bn=True
        ),
        description="PEMR encoder released by the paper's authors (trained on MagnaTagATune), converted",
    )


class _Opaque:
    """Stands in for any non-tensor object in a checkpoint; accepts and ignores its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}
_STORAGE = re.compile(r"^(Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool)Storage$")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and _STORAGE.match(name)):
            return super().find_class(module, name)
        return _Opaque


class _RestrictedPickle:
    """A ``pickle_module`` for torch.load whose unpickler cannot construct arbitrary objects."""

    Unpickler = _RestrictedUnpickler
    __name__ = "musicembed_restricted_pickle"

    @staticmethod
    def load(f: io.BufferedIOBase, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(f, **kwargs).load()


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch/Lightning checkpoint, read without running pickled code."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such checkpoint file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch's zip format, or a legacy pickle
        raise WeightsError(f"{path}: not a PyTorch checkpoint (neither torch's zip format nor a pickle)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickle)
    except Exception as e:  # a damaged or foreign file: whatever torch or the unpickler raise (MemoryError too)
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: no state_dict found in the checkpoint")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _encoder_key(key: str) -> str | None:
    """Authors' key -> musicembed key, or None for parts inference does not use."""
    for prefix in ("model.encoder.", "encoder."):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key.startswith("spec_bn."):
        return "encoder.input_bn." + key[len("spec_bn."):]
    m = re.match(r"layer([1-4])\.(conv|bn)\.(.+)$", key)
    if m:
        return f"encoder.blocks.{int(m.group(1)) - 1}.{0 if m.group(2) == 'conv' else 1}.{m.group(3)}"
    return None


def convert_pemr_official(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors for the authors' PEMR encoder; returns the folder."""
    state = read_checkpoint(checkpoint)
    mapped = {new: v for k, v in state.items() if (new := _encoder_key(k)) is not None}
    cfg = pemr_official_config()
    net = build_model(cfg)
    expected = set(net.state_dict())
    missing = sorted(expected - set(mapped))
    if missing:
        raise WeightsError(
            f"{checkpoint}: not a PEMR checkpoint of the authors' layout; missing encoder tensors "
            f"{missing[:4]}{'...' if len(missing) > 4 else ''}"
        )
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{checkpoint}: encoder tensors have unexpected shapes: {e}") from None
    return save_pretrained(net, out_dir, cfg)
