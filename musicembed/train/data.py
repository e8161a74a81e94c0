"""Training data: audio file lists, a decode-once cache, random-crop datasets and loaders.

Decoding MP3/OGG every epoch is too slow on a few CPU cores, so every track is decoded and
resampled once (``musicembed.audio.load_audio``) into an int16 ``.npy`` file under a cache
folder, keyed by the file's absolute path, mtime, size and the sample rate; crops are read
from memory-mapped cache files. Crop positions come from a generator seeded by
(seed, epoch, track index), so a batch does not depend on worker count or scheduling.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import signal
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from tqdm import tqdm

from ..audio import find_audio_files, load_audio
from ..errors import AudioError

INT16_SCALE = 32767.0


def default_cache_dir() -> Path:
    """$MUSICEMBED_CACHE/train-audio, else $XDG_CACHE_HOME (or ~/.cache)/musicembed/train-audio."""
    base = os.environ.get("MUSICEMBED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "musicembed"
    )
    return Path(base) / "train-audio"


def _manifest_rows(src: Path, split: str | None) -> list[dict[str, str]]:
    """The rows of CSV manifest ``src`` (of ``split`` when given), checked for the needed columns."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "path" not in rows[0]:
        raise ValueError(f"{src}: CSV manifest needs a 'path' column")
    if split is not None:
        if rows and "split" not in rows[0]:
            raise ValueError(f"{src}: --split given but the manifest has no 'split' column")
        rows = [r for r in rows if r["split"] == split]
    return rows


def _listed_path(src: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else src.parent / path


def list_tracks(source: str | os.PathLike, split: str | None = None) -> list[list[Path]]:
    """Pieces to train on, each a list of its recordings ("versions"): the audio files of a folder
    (recursive) or a text list (one path per line, '#' comments) are one piece each; in a CSV
    manifest with a ``path`` column (and a ``split`` column when ``split`` is given), rows that
    share a ``track_id`` value are versions of one piece (covers, other renders of one score).
    Relative paths in lists are relative to the list file's folder."""
    src = Path(source)
    if src.is_dir():
        files, problems = find_audio_files([src], recursive=True)
        if problems:
            raise ValueError("; ".join(f"{p}: {why}" for p, why in problems))
        return [[f] for f in files]
    if not src.is_file():
        raise ValueError(f"{src}: no such folder or list file")
    if src.suffix.lower() == ".csv":
        keyed = [(r["path"], r.get("track_id") or f"row {i}") for i, r in enumerate(_manifest_rows(src, split))]
    else:
        if split is not None:
            raise ValueError("--split needs a CSV manifest with a 'split' column")
        lines = (line.strip() for line in src.read_text().splitlines())
        keyed = [(line, f"row {i}") for i, line in enumerate(lines) if line and not line.startswith("#")]
    pieces: dict[str, list[Path]] = {}
    for name, key in keyed:
        pieces.setdefault(key, []).append(_listed_path(src, name))
    if not pieces:
        raise ValueError(f"{src}: lists no audio files" + (f" in split {split!r}" if split else ""))
    return list(pieces.values())


def version_speeds(source: str | os.PathLike, split: str | None = None) -> dict[Path, float]:
    """The speed at which each recording of a CSV manifest plays its score, from the manifest's
    ``tempo`` column (1.1: one second of audio holds 1.1 s of the score at its written tempo),
    keyed like :func:`list_tracks`'s paths; rows with no value are left out, and so is every
    row of a folder, a text list or a manifest without that column."""
    src = Path(source)
    if not (src.is_file() and src.suffix.lower() == ".csv"):
        return {}
    speeds = {}
    for row in _manifest_rows(src, split):
        if row.get("tempo"):
            speed = float(row["tempo"])
            if not speed > 0:
                raise ValueError(f"{src}: tempo of {row['path']} must be above 0, not {row['tempo']}")
            speeds[_listed_path(src, row["path"])] = speed
    return speeds


def cache_key(path: Path, sample_rate: int) -> str:
    """Hex key of a decoded track: absolute path, mtime (ns), size (bytes) and sample rate (Hz)."""
    st = path.stat()
    text = f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}|{sample_rate}"
    return hashlib.sha1(text.encode()).hexdigest()


def _decode_to_cache(path: Path, target: Path, sample_rate: int) -> str | None:
    """Decode one file into ``target`` (int16 .npy, written atomically); the error text on failure."""
    try:
        audio = load_audio(path, sample_rate)
    except AudioError as e:
        return str(e)
    pcm = np.clip(np.round(audio * INT16_SCALE), -32768, 32767).astype(np.int16)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, pcm)
    os.replace(tmp, target)
    return None


def _report(results: Iterator[tuple[Path, str | None]], bar: tqdm) -> set[Path]:
    """Warn about each failed decode; the failed cache targets."""
    failed = set()
    for target, error in results:
        if error:
            warnings.warn(f"skipping unreadable track: {error}", stacklevel=3)
            failed.add(target)
        bar.update()
    return failed


def build_cache(
    files: list[Path], cache_dir: Path, sample_rate: int, workers: int = 1, progress: bool = True
) -> dict[Path, Path]:
    """Decode the files not cached yet (in ``workers`` processes); return {audio file: cache file}
    of all readable files, in input order. Unreadable files are skipped with a warning."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    targets: dict[Path, Path] = {}
    for p in files:
        try:
            targets[p] = cache_dir / f"{cache_key(p, sample_rate)}.npy"
        except OSError as e:
            warnings.warn(f"skipping unreadable track: {p}: {e.strerror}", stacklevel=2)
    todo = [(p, t) for p, t in targets.items() if not t.exists()]
    failed: set[Path] = set()
    if todo:
        bar = tqdm(total=len(todo), desc="decoding audio into cache", unit="file", disable=not progress)
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                jobs = [(t, pool.submit(_decode_to_cache, p, t, sample_rate)) for p, t in todo]
                errors = ((t, job.result()) for t, job in jobs)
                failed = _report(errors, bar)
        else:
            failed = _report(((t, _decode_to_cache(p, t, sample_rate)) for p, t in todo), bar)
        bar.close()
    return {p: t for p, t in targets.items() if t not in failed}


def cached_pieces(pieces: list[list[Path]], cache: dict[Path, Path]) -> list[list[Path]]:
    """``pieces`` with each audio file replaced by its cache file; unreadable files are dropped,
    and so are pieces left without any."""
    kept = ([cache[p] for p in versions if p in cache] for versions in pieces)
    return [versions for versions in kept if versions]


def read_crop(track: np.ndarray, start: int, length: int) -> np.ndarray:
    """float32 (length,) from int16 ``track`` at ``start``; zero-padded past the end."""
    out = np.zeros(length, dtype=np.float32)
    piece = track[start : start + length]
    out[: len(piece)] = piece
    out *= 1.0 / INT16_SCALE
    return out


class CropDataset(Dataset):
    """Item (epoch, i): ``views`` random crops (views, crop_samples) float32 of cached piece i.

    A piece is a list of cached recordings (versions of one piece of music). Each view comes
    from a version of its own while there are enough (so a pair of a piece with two renders
    is always cross-version), and from a uniform random position inside it (recordings shorter
    than a crop are zero-padded); positions are new in every epoch. With ``speeds`` (recording
    -> the speed it plays its score at, :func:`version_speeds`), views from different versions
    that all have a speed are centred on one random point of the score instead, so they hold
    the same notes (clamped to each recording's ends).
    """

    def __init__(self, pieces: list[list[Path]], crop_samples: int, views: int = 2, seed: int = 0,
                 speeds: dict[Path, float] | None = None) -> None:
        if not pieces:
            raise ValueError("no readable tracks to train on")
        self.pieces = pieces
        self.crop_samples = crop_samples
        self.views = views
        self.seed = seed
        self.speeds = speeds or {}

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        rng = np.random.default_rng((self.seed, epoch, index))
        versions = self.pieces[index]
        if len(versions) == 1:
            chosen = [0] * self.views
        else:
            chosen = rng.permutation(len(versions))[: self.views].tolist()
            chosen += rng.integers(0, len(versions), size=self.views - len(chosen)).tolist()
        tracks = {v: np.load(versions[v], mmap_mode="r") for v in set(chosen)}
        rooms = [max(len(tracks[v]) - self.crop_samples, 0) for v in chosen]
        speeds = [self.speeds.get(versions[v]) for v in chosen]
        if len(set(chosen)) > 1 and all(speeds):
            score_samples = min(len(tracks[v]) * s for v, s in zip(chosen, speeds))
            centre = rng.uniform(0, score_samples)
            starts = [int(np.clip(centre / s - self.crop_samples / 2, 0, room)) for s, room in zip(speeds, rooms)]
        else:
            starts = [int(rng.integers(0, room + 1)) for room in rooms]
        crops = [read_crop(tracks[v], start, self.crop_samples) for v, start in zip(chosen, starts)]
        return torch.from_numpy(np.stack(crops))


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, track index) of one rank, endlessly: epoch after epoch, each shuffled
    like a :class:`DistributedSampler` (this rank's share) and cut into ``batch_size`` batches,
    the incomplete last one dropped. :meth:`start` sets the first epoch and how many of its
    batches to skip, so a resumed run sees the batches it had not seen."""

    def __init__(self, size: int, rank: int, world: int, seed: int, batch_size: int) -> None:
        self.inner = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.batch_size = batch_size
        self.first_epoch = 0
        self.skip = 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.inner) // self.batch_size

    def indices(self, epoch: int) -> list[int]:
        """This rank's track indices of ``epoch``, in order."""
        self.inner.set_epoch(epoch)
        return list(self.inner)

    def start(self, epoch: int, skip_batches: int = 0) -> None:
        self.first_epoch = epoch
        self.skip = skip_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.first_epoch, self.skip
        while True:
            order = self.indices(epoch)
            for b in range(skip, self.batches_per_epoch):
                yield [(epoch, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]
            epoch, skip = epoch + 1, 0


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: seed numpy/random from the worker's torch seed; leave SIGINT and
    SIGTERM to the main process, which checkpoints and stops the workers itself."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _NumberedBatches(Sampler[tuple[int, list[tuple[int, int]]]]):
    """The batches of an :class:`EpochBatchSampler`, each with its optimizer step number."""

    def __init__(self, batches: EpochBatchSampler, first_step: int) -> None:
        self.batches = batches
        self.first_step = first_step

    def __iter__(self) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        return enumerate(self.batches, start=self.first_step)


class _Batches(Dataset):
    """Item (step, keys): the crops of ``keys`` stacked (B, views, crop_samples), passed through
    ``transform(batch, step)`` when one is given (it then runs in the DataLoader workers)."""

    def __init__(self, crops: CropDataset, transform: Callable[[torch.Tensor, int], torch.Tensor] | None) -> None:
        self.crops = crops
        self.transform = transform

    def __getitem__(self, key: tuple[int, list[tuple[int, int]]]) -> torch.Tensor:
        step, keys = key
        batch = default_collate([self.crops[k] for k in keys])  # in a worker: straight into shared memory
        return batch if self.transform is None else self.transform(batch, step)


@dataclass
class EpochLoader:
    """Batches of one rank, epoch by epoch, resumable inside an epoch: crops (B, views,
    crop_samples), or what ``transform(crops, step)`` makes of them in the worker processes
    (``step``: the optimizer step the batch is for)."""

    dataset: CropDataset
    sampler: EpochBatchSampler
    workers: int
    seed: int
    pin_memory: bool = False
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def stream(self, epoch: int, skip_batches: int = 0, first_step: int = 0) -> Iterator[torch.Tensor]:
        """Every batch from ``epoch`` on, without that epoch's first ``skip_batches``, endlessly;
        the first is for optimizer step ``first_step``.

        One DataLoader serves the whole stream: its worker processes are forked once, not once
        per epoch (each fork of the training process copies its page tables and makes its
        memory copy-on-write until the worker exits). Each worker makes whole batches."""
        self.sampler.start(epoch, skip_batches)
        return iter(DataLoader(
            _Batches(self.dataset, self.transform),
            sampler=_NumberedBatches(self.sampler, first_step),
            batch_size=None,
            num_workers=self.workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed * 100003 + epoch),
            pin_memory=self.pin_memory,
        ))


def make_loader(
    pieces: list[list[Path]], crop_samples: int, views: int, batch_size: int, workers: int, seed: int,
    rank: int = 0, world: int = 1, pin_memory: bool = False,
    transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None, speeds: dict[Path, float] | None = None,
) -> EpochLoader:
    """An :class:`EpochLoader` over cached pieces (``speeds``: :class:`CropDataset`'s); raises if
    one rank's share is under one batch."""
    dataset = CropDataset(pieces, crop_samples, views, seed, speeds)
    loader = EpochLoader(dataset, EpochBatchSampler(len(dataset), rank, world, seed, batch_size), workers, seed,
                         pin_memory, transform)
    if loader.steps_per_epoch == 0:
        raise ValueError(
            f"{len(pieces)} tracks over {world} process(es) give less than one batch of {batch_size}; "
            "lower --batch-size or add tracks"
        )
    return loader
