"""musicembed: music embeddings from pretrained self-supervised encoders (PEMR, MART).

    from musicembed import load_model
    model = load_model("pemr")
    v = model.embed("song.mp3")            # (D,) float32
"""

from __future__ import annotations

from .errors import AudioError, MusicEmbedError, WeightsError
from .hub import list_models
from .model import Model, load_model
from .results import Embedding, EmbedError, LevelEmbedding

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "EmbedError",
    "Embedding",
    "LevelEmbedding",
    "Model",
    "MusicEmbedError",
    "WeightsError",
    "__version__",
    "list_models",
    "load_model",
]
