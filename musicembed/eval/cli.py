"""``musicembed eval``: the papers' downstream protocols and the free-music evaluation.

Every subcommand embeds the files with the system given by ``--model``/``--system``
(a model name or folder, ``mfcc``, ``randfcn``, ``chroma``, or ``random:<model>``), caches the
embeddings in an ``.npz`` under ``--out``, prints the metrics as JSON and writes them to a JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import MusicEmbedError
from . import datasets
from .embeddings import embed_files
from .finetune import FinetuneConfig, WaveformDataset, finetune, model_encoder_factory
from .free_music import DEFAULT_SPLIT, SPLITS, FreeMusicConfig, evaluate_free_music, markdown_table, write_report
from .metrics import retrieval_metrics
from .probes import PROBES, ProbeConfig, probe_evaluation
from .systems import System, is_musicnn, load_system, musicnn_system

SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test"}  # dataset split -> probe split


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_")


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn dataset/model/audio errors into a one-line CLI error instead of a traceback."""
    try:
        yield
    except (MusicEmbedError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _emit(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    path.write_text(text + "\n")
    click.echo(text)
    _log(f"wrote {path}")


def _tagging_items(dataset: str, root: Path) -> tuple[dict[str, list[tuple[Path, Any]]], str]:
    if dataset == "mtat":
        return {s: datasets.load_mtat(root, s) for s in datasets.MTAT_SPLITS}, "multilabel"
    return {s: datasets.load_gtzan(root, s) for s in datasets.GTZAN_SPLITS}, "multiclass"


model_option = click.option("--model", "model", required=True,
                            help="Model name or folder, 'mfcc', 'randfcn' (wide random FCN), 'chroma' "
                                 "(key-invariant chroma), or 'random:<model>' (same architecture, untrained).")
out_option = click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
                          default=Path("eval-results"), show_default=True,
                          help="Folder for results and the embedding cache.")
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:1, ... (default: CUDA if available).")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Seed of probes and subsets.")


@click.group("eval")
def eval_command() -> None:
    """Evaluate embeddings with the papers' downstream protocols (linear/MLP probes,
    fine-tuning with few labels, cover-song retrieval) and on the free-music splits."""


@eval_command.command("tagging")
@click.option("--dataset", type=click.Choice(["mtat", "gtzan"]), required=True,
              help="mtat: top-50 tags (ROC-AUC, PR-AUC); gtzan: genres (accuracy).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Your copy of the dataset (see docs/evaluation.md for the expected layout).")
@model_option
@click.option("--probe", "probes", type=click.Choice(PROBES), multiple=True, default=("linear",), show_default=True,
              help="Probe(s) on the frozen embeddings; repeat for both.")
@out_option
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Embedding cache (.npz); default OUT/cache/<dataset>-<model>.npz.")
@device_option
@seed_option
def tagging(dataset: str, root: Path, model: str, probes: tuple[str, ...], out: Path, cache: Path | None,
            device: str | None, seed: int) -> None:
    """Frozen-embedding probes on MagnaTagATune or GTZAN (train / early-stop on valid / test).

    \b
    Examples:
      musicembed eval tagging --dataset mtat --root data/mtat --model pemr
      musicembed eval tagging --dataset gtzan --root data/gtzan --model models/mart --probe linear --probe mlp
    """
    with _user_errors():
        items, task = _tagging_items(dataset, root)
        system = load_system(model, device=device)
        paths = [p for split in items.values() for p, _ in split]
        emb = embed_files(system, paths, cache=cache or out / "cache" / f"{dataset}-{_slug(model)}.npz", log=_log)
        vec = {p: emb.vectors[i] for i, p in enumerate(paths) if i not in emb.failed}
        splits = {}
        for name, split in items.items():
            kept = [(p, y) for p, y in split if p in vec]
            x = np.stack([vec[p] for p, _ in kept])
            splits[SPLIT_NAMES[name]] = (x, np.stack([np.asarray(y) for _, y in kept]))
        result: dict[str, Any] = {"task": "tagging", "dataset": dataset, "model": model, "probes": {},
                                  "failed_files": {str(paths[i]): msg for i, msg in emb.failed.items()}}
        for kind in probes:
            result["probes"][kind] = probe_evaluation(splits, task, ProbeConfig(kind=kind, seed=seed))
        _emit(result, out / f"{dataset}-{_slug(model)}-tagging.json")


@eval_command.command("finetune")
@click.option("--dataset", type=click.Choice(["mtat", "gtzan"]), required=True)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--model", "model", required=True, help="Model name or folder; 'random:<model>' trains from scratch.")
@click.option("--fraction", type=float, default=0.1, show_default=True,
              help="Fraction of the training labels used (the papers: 0.01 and 0.1).")
@click.option("--epochs", type=int, default=100, show_default=True, help="Maximum epochs (early stopping on valid).")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Encoder learning rate (head: 10x).")
@out_option
@device_option
@seed_option
def finetune_cmd(dataset: str, root: Path, model: str, fraction: float, epochs: int, batch_size: int, lr: float,
                 out: Path, device: str | None, seed: int) -> None:
    """Fine-tune encoder + linear head on a stratified FRACTION of the training labels.

    \b
    Examples:
      musicembed eval finetune --dataset gtzan --root data/gtzan --model pemr --fraction 0.1
      musicembed eval finetune --dataset gtzan --root data/gtzan --model random:pemr
    """
    with _user_errors():
        items, task = _tagging_items(dataset, root)
        factory, rate, window = model_encoder_factory(model)
        train = WaveformDataset(items["train"], rate, window, windows=False, seed=seed)
        val = WaveformDataset(items["valid"], rate, window, windows=True)
        test = WaveformDataset(items["test"], rate, window, windows=True)
        n_classes = len(datasets.mtat_tags()) if task == "multilabel" else len(datasets.GTZAN_GENRES)
        cfg = FinetuneConfig(lr=lr, head_lr=10 * lr, batch_size=batch_size, max_epochs=epochs, seed=seed,
                             device=device or "cpu")
        res = finetune(factory, train, val, task, n_classes, fraction=fraction, config=cfg, test=test)
        res.pop("model")
        result = {"task": "finetune", "dataset": dataset, "model": model, **res}
        _emit(result, out / f"{dataset}-{_slug(model)}-finetune-{fraction:g}.json")


def _cover_items(dataset: str, root: Path, split: str, list_file: Path | None,
                 allow_missing: bool) -> list[tuple[Path, str]]:
    if dataset == "covers80":
        return datasets.load_covers80(root)
    if dataset == "shs100k-sub":
        return datasets.load_shs100k_sub(root, split, allow_missing=allow_missing)
    if list_file is None:
        raise click.UsageError("--dataset shs100k needs --list-file (e.g. SHS100K-TEST from github.com/NovaFrost/"
                               "SHS100K2); the shipped subset is --dataset shs100k-sub")
    return datasets.load_shs100k(root, list_file, allow_missing=allow_missing)


@eval_command.command("covers")
@click.option("--dataset", type=click.Choice(["shs100k-sub", "shs100k", "covers80"]), required=True,
              help="shs100k-sub: the papers' subset (shipped split); shs100k: your list file; covers80: folder.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True)
@model_option
@click.option("--split", type=click.Choice(list(datasets.SHS100K_SUB_SPLITS)), default="test", show_default=True,
              help="SHS100K-SUB split.")
@click.option("--list-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SHS100K list (set_id<TAB>ver_id per line) for --dataset shs100k.")
@click.option("--allow-missing", is_flag=True, help="Skip SHS100K recordings not found under --root.")
@out_option
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Embedding cache (.npz); default OUT/cache/<dataset>-<model>.npz.")
@device_option
def covers(dataset: str, root: Path, model: str, split: str, list_file: Path | None, allow_missing: bool, out: Path,
           cache: Path | None, device: str | None) -> None:
    """Cover-song identification: MAP, P@10, MR1 ranking all other recordings by cosine similarity.

    \b
    Examples:
      musicembed eval covers --dataset covers80 --root data/covers80 --model pemr
      musicembed eval covers --dataset shs100k-sub --root data/shs --model mart --allow-missing
    """
    with _user_errors():
        items = _cover_items(dataset, root, split, list_file, allow_missing)
        system = load_system(model, device=device)
        emb = embed_files(system, [p for p, _ in items], cache=cache or out / "cache" / f"{dataset}-{_slug(model)}.npz",
                          log=_log)
        ok = emb.ok
        works = [w for (_, w), keep in zip(items, ok, strict=True) if keep]
        metrics = retrieval_metrics(emb.vectors[ok], works, ks=(10,))
        result = {"task": "covers", "dataset": dataset, "model": model, "recordings": int(ok.sum()), **metrics,
                  "failed_files": {str(items[i][0]): msg for i, msg in emb.failed.items()}}
        name = f"{dataset}-{split}" if dataset == "shs100k-sub" else dataset
        _emit(result, out / f"{name}-{_slug(model)}-covers.json")


@eval_command.command("free-music")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with manifest.csv, covers.csv and the audio.")
@click.option("--split", type=click.Choice(SPLITS), default=DEFAULT_SPLIT, show_default=True,
              help="select: held-out sources for choosing checkpoints and settings; report: held-out sources "
                   "for the final table only; val: held-out tracks of the training sources (in-distribution).")
@click.option("--system", "systems", multiple=True, required=True,
              help="Model name or folder, 'mfcc', 'randfcn', 'chroma', 'random:<model>' or 'musicnn[.<layer>]' (needs "
                   "--musicnn-python); repeat for each table row.")
@click.option("--baseline", "baselines", multiple=True,
              help="A system every other system is compared with (paired-bootstrap differences); repeatable; "
                   "added to the systems when not among them.")
@click.option("--musicnn-python", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Interpreter of an environment with musicnn and TensorFlow, which runs the 'musicnn' systems "
                   "(layers max_pool, the default, mean_pool and penultimate).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-results/free_music"),
              show_default=True)
@click.option("--excerpt-seconds", type=float, default=10.0, show_default=True,
              help="Length of the two same-track excerpts (at most half of each track).")
@click.option("--min-excerpt-seconds", type=float, default=2.0, show_default=True,
              help="Tracks whose excerpts would be shorter are left out of same-track retrieval and robustness.")
@click.option("--classify-seconds", type=float, default=30.0, show_default=True,
              help="Source classification uses each track's central N seconds; 0: whole tracks.")
@click.option("--robust-seconds", type=float, default=10.0, show_default=True,
              help="Length of the central clean excerpt of the robustness task.")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Cross-validation folds of the source-classification probe (stratified by source, by track).")
@click.option("--resamples", type=int, default=1000, show_default=True,
              help="Bootstrap resamples of the tracks for the 95 % intervals.")
@device_option
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the folds, the probe, the noise and the bootstrap.")
def free_music(data_dir: Path, split: str, systems: tuple[str, ...], baselines: tuple[str, ...],
               musicnn_python: Path | None, out: Path, excerpt_seconds: float, min_excerpt_seconds: float,
               classify_seconds: float, robust_seconds: float, folds: int, resamples: int, device: str | None, seed: int) -> None:
    """Same-track retrieval, synthetic covers, source classification, robustness to
    degradations and the covariance spectrum on one split, for every system in one run,
    with 95 % bootstrap intervals and paired differences from the baselines (markdown + JSON).

    \b
    Examples:
      musicembed eval free-music --data data/free_music --system pemr --system mart --baseline mfcc --baseline randfcn
      musicembed eval free-music --data data/free_music --split report --system models/pemr --baseline mfcc
      musicembed eval free-music --data data/free_music --split val --system pemr --classify-seconds 10
      musicembed eval free-music --data data/free_music --split report --system pemr --system musicnn \\
        --musicnn-python peer-venv/bin/python
    """
    with _user_errors():
        cfg = FreeMusicConfig(split=split, excerpt_seconds=excerpt_seconds, min_excerpt_seconds=min_excerpt_seconds,
                              classify_seconds=classify_seconds or None, robust_seconds=robust_seconds, folds=folds,
                              resamples=resamples, seed=seed, probe=ProbeConfig(seed=seed))
        specs = list(dict.fromkeys(systems + tuple(b for b in baselines if is_musicnn(b))))
        rows: list[str | System] = [musicnn_system(s, musicnn_python) if is_musicnn(s) and musicnn_python else s
                                    for s in specs]
        report = evaluate_free_music(data_dir, rows, out, config=cfg, device=device, log=_log, baselines=baselines)
        js, md = write_report(report, out)
        click.echo(markdown_table(report))
        _log(f"wrote {js} and {md}")


@eval_command.command("calibrate")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with manifest.csv, covers.csv and the audio.")
@click.option("--model", "model_name", required=True, help="Model name or folder to calibrate.")
@click.option("--split", type=click.Choice(["select", "val"]), default="select", show_default=True,
              help="select: the held-out sources kept for choosing settings (the report sources are never fitted on).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the excerpts and degraded copies (those of `eval free-music --out` are reused).")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Embedding cache (.npz; default: WORK_DIR/cache/calibrate-<model>.npz).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="calibration.json to write (beside the model's weights to ship it).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report (JSON) here, and its tables beside it (.md).")
@click.option("--register", "register_name", default=None,
              help="Manifest model name: list --out in its manifest entry with its sha256.")
@click.option("--excerpt-seconds", type=float, default=10.0, show_default=True,
              help="Length of the excerpts of the same-track, same-source and unrelated pairs.")
@click.option("--min-excerpt-seconds", type=float, default=2.0, show_default=True,
              help="Tracks whose excerpts would be shorter are left out.")
@click.option("--robust-seconds", type=float, default=10.0, show_default=True,
              help="Length of the central clean excerpt of the same-recording pairs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the degradations' noise.")
@device_option
def calibrate_command(data_dir: Path, model_name: str, split: str, work_dir: Path, cache: Path | None, out: Path,
                      report_path: Path | None, register_name: str | None, excerpt_seconds: float,
                      min_excerpt_seconds: float, robust_seconds: float, seed: int, device: str | None) -> None:
    """Fit a model's similarity calibration (calibration.json) on held-out sources and check
    it by nested leave-one-source-out cross-validation (ECE, precision and recall).

    \b
    Example:
      musicembed eval calibrate --model pemr --data data/free_music --work-dir eval-results/select \\
          --out musicembed/weights/pemr/calibration.json --report eval-results/calibration-pemr.json --register pemr
    """
    from ..hub import _package_dir
    from ..model import load_model
    from .calibrate import calibrate, markdown, register

    with _user_errors():
        cfg = FreeMusicConfig(split=split, excerpt_seconds=excerpt_seconds, min_excerpt_seconds=min_excerpt_seconds,
                              robust_seconds=robust_seconds, seed=seed)
        system = load_system(model_name, device=device)
        fingerprint = load_model(model_name, device="cpu").fingerprint()
        cal, report = calibrate(system, fingerprint, data_dir, work_dir,
                                cache=cache or work_dir / "cache" / f"calibrate-{_slug(model_name)}.npz", config=cfg,
                                log=_log)
        cal.save(out)
        table = markdown(report)
        click.echo(table)
        _log(f"wrote {out}")
        if report_path:
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
            report_path.with_suffix(".md").write_text(table)
            _log(f"wrote {report_path} and {report_path.with_suffix('.md')}")
        if register_name:
            item = register(register_name, out, _package_dir() / "weights_manifest.json")
            _log(f"listed {item['path']} (sha256 {item['sha256'][:12]}...) in the manifest entry {register_name!r}")


@eval_command.command("mart-levels")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with manifest.csv, covers.csv and the audio.")
@click.option("--model", "model_name", default="mart", show_default=True, help="A MART model name or folder.")
@click.option("--split", type=click.Choice(SPLITS), default=DEFAULT_SPLIT, show_default=True)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder of the excerpts and degraded copies (those of `eval free-music --out` are reused).")
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Per-level vector cache (.npz; default: WORK_DIR/cache/levels-<model>.npz).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Report JSON (and .md).")
@click.option("--resamples", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def mart_levels(data_dir: Path, model_name: str, split: str, work_dir: Path, cache: Path | None, out: Path,
                resamples: int, seed: int, device: str | None) -> None:
    """Same-track, covers, source-probe and robustness figures for each MART level's vectors
    (and their concatenation and mean), with 95 % bootstrap intervals (markdown + JSON).

    \b
    Example:
      musicembed eval mart-levels --data data/free_music --work-dir eval-results/select --out mart-levels.json
    """
    from ..model import load_model
    from .levels import evaluate_levels, markdown

    with _user_errors():
        model = load_model(model_name, device=device)
        if model.config.method != "mart":
            raise click.ClickException(f"{model_name}: not a MART model")
        cfg = FreeMusicConfig(split=split, resamples=resamples, seed=seed, probe=ProbeConfig(seed=seed))
        report = evaluate_levels(model, data_dir, work_dir, cfg,
                                 cache=cache or work_dir / "cache" / f"levels-{_slug(model_name)}.npz", log=_log)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        table = markdown(report)
        out.with_suffix(".md").write_text(table)
        click.echo(table)
        _log(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    eval_command(prog_name="musicembed eval")
