"""Downstream evaluation: metrics, probes, fine-tuning with few labels, dataset loaders,
the free-music evaluation (with its degradations and bootstrap intervals), and the
``musicembed eval`` command group.

    from musicembed.eval import retrieval_metrics, probe_evaluation, load_covers80
"""

from __future__ import annotations

from .bootstrap import TrackMetric, bootstrap_interval, paired_difference
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
from .degrade import DEGRADATIONS, add_noise, gain, lowpass, pitch_shift, time_stretch
from .embeddings import Embedded, embed_files
from .finetune import FinetuneConfig, WaveformDataset, finetune, label_subset, model_encoder_factory
from .free_music import (
    SPLITS,
    FreeMusicConfig,
    covariance_spectrum,
    evaluate_free_music,
    markdown_table,
    stratified_folds,
    write_report,
)
from .metrics import (
    accuracy,
    average_precision,
    classification_metrics,
    retrieval_metrics,
    retrieval_per_query,
    roc_auc,
    tagging_metrics,
)
from .probes import Probe, ProbeConfig, fit_probe, probe_evaluation
from .systems import MFCCEmbedder, RandomFCNEmbedder, System, load_system, random_model

__all__ = [
    "DEGRADATIONS",
    "GTZAN_GENRES",
    "DatasetError",
    "Embedded",
    "FinetuneConfig",
    "FreeMusicConfig",
    "MFCCEmbedder",
    "Probe",
    "ProbeConfig",
    "RandomFCNEmbedder",
    "SPLITS",
    "System",
    "TrackMetric",
    "WaveformDataset",
    "accuracy",
    "add_noise",
    "average_precision",
    "bootstrap_interval",
    "classification_metrics",
    "covariance_spectrum",
    "embed_files",
    "evaluate_free_music",
    "finetune",
    "fit_probe",
    "gain",
    "label_subset",
    "load_covers80",
    "load_gtzan",
    "load_mtat",
    "load_shs100k",
    "load_shs100k_sub",
    "load_system",
    "lowpass",
    "markdown_table",
    "model_encoder_factory",
    "mtat_tags",
    "paired_difference",
    "pitch_shift",
    "probe_evaluation",
    "random_model",
    "retrieval_metrics",
    "retrieval_per_query",
    "roc_auc",
    "stratified_folds",
    "tagging_metrics",
    "time_stretch",
    "write_report",
]
