"""Downstream evaluation: metrics, probes, fine-tuning with few labels, dataset loaders,
the free-music validation protocol, and the ``musicembed eval`` command group.

    from musicembed.train.eval import retrieval_metrics, probe_evaluation, load_covers80
"""

from __future__ import annotations

from .datasets import (
    GTZAN_GENRES,
    DatasetError,
    load_covers80,
    load_gtzan,
    load_mtat,
    load_shs100k,
    load_shs100k_sub,
    mtat_tags,
)
from .embeddings import Embedded, embed_files
from .finetune import FinetuneConfig, WaveformDataset, finetune, label_subset, model_encoder_factory
from .free_music import FreeMusicConfig, covariance_spectrum, evaluate_free_music, markdown_table, write_report
from .metrics import (
    accuracy,
    average_precision,
    classification_metrics,
    retrieval_metrics,
    roc_auc,
    tagging_metrics,
)
from .probes import Probe, ProbeConfig, fit_probe, probe_evaluation
from .systems import MFCCEmbedder, System, load_system, random_model

__all__ = [
    "GTZAN_GENRES",
    "DatasetError",
    "Embedded",
    "FinetuneConfig",
    "FreeMusicConfig",
    "MFCCEmbedder",
    "Probe",
    "ProbeConfig",
    "System",
    "WaveformDataset",
    "accuracy",
    "average_precision",
    "classification_metrics",
    "covariance_spectrum",
    "embed_files",
    "evaluate_free_music",
    "finetune",
    "fit_probe",
    "label_subset",
    "load_covers80",
    "load_gtzan",
    "load_mtat",
    "load_shs100k",
    "load_shs100k_sub",
    "load_system",
    "markdown_table",
    "model_encoder_factory",
    "mtat_tags",
    "probe_evaluation",
    "random_model",
    "retrieval_metrics",
    "roc_auc",
    "tagging_metrics",
    "write_report",
]
