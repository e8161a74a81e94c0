"""Loaders for the papers' downstream datasets, reading the user's local copies.

Each loader returns a list of ``(audio path, label)`` for one split: a (50,) 0/1 tag
vector for MagnaTagATune, a genre index for GTZAN, a work id for the cover-song sets.
The split lists ship in ``splits/`` (sources and licences in its README); nothing is
downloaded. A missing folder, annotation file or audio file raises
:class:`DatasetError` naming what is missing and where it was looked for.
"""

from __future__ import annotations

import csv
import gzip
import os
import warnings
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import numpy as np

from ..audio import AUDIO_EXTENSIONS
from ..errors import MusicEmbedError

PathLike = str | os.PathLike
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
MTAT_SPLITS = ("train", "valid", "test")
MTAT_FOLDERS = "0123456789abcdef"
GTZAN_SPLITS = ("train", "valid", "test")
SHS100K_SUB_SPLITS = ("train", "val", "test")


class DatasetError(MusicEmbedError):
    """A dataset folder, annotation file or audio file is missing or malformed."""


def _split_text(*parts: str) -> str:
    res = resources.files(__package__).joinpath("splits", *parts)
    data = res.read_bytes()
    return (gzip.decompress(data) if parts[-1].endswith(".gz") else data).decode("utf-8")


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _check_split(split: str, allowed: Iterable[str], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(allowed)}")


def _root(root: PathLike, dataset: str) -> Path:
    p = Path(root).expanduser()
    if not p.is_dir():
        raise DatasetError(f"{dataset}: folder {p} does not exist")
    return p


def _require_files(items: list[tuple[Path, object]], dataset: str, where: Path, allow_missing: bool) -> list:
    missing = [p for p, _ in items if not p.is_file()]
    if not missing:
        return items
    shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
    if not allow_missing:
        raise DatasetError(f"{dataset}: {len(missing)} of {len(items)} audio files are missing under {where}: {shown}")
    warnings.warn(f"{dataset}: skipping {len(missing)} of {len(items)} missing audio files ({shown})", stacklevel=3)
    gone = set(missing)
    return [it for it in items if it[0] not in gone]


# ----------------------------------------------------------------------------- MagnaTagATune


def mtat_tags() -> list[str]:
    """The 50 tags, in label order, spelled as in ``annotations_final.csv``."""
    return _lines(_split_text("mtat", "tags.txt"))


def mtat_split(split: str) -> list[str]:
    """Clip paths (``<dir>/<name>.mp3``) of a shipped MagnaTagATune split."""
    _check_split(split, MTAT_SPLITS, "MagnaTagATune")
    return _lines(_split_text("mtat", f"{split}.txt.gz"))


def _mtat_annotations(path: Path) -> dict[str, np.ndarray]:
    tags = mtat_tags()
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or "mp3_path" not in header:
            raise DatasetError(f"MagnaTagATune: {path} has no 'mp3_path' column; is it annotations_final.csv?")
        absent = [t for t in tags if t not in header]
        if absent:
            raise DatasetError(f"MagnaTagATune: {path} lacks tag columns {absent[:5]}")
        cols = [header.index(t) for t in tags]
        path_col = header.index("mp3_path")
        return {row[path_col]: np.array([int(row[c]) for c in cols], dtype=np.int8)
                for row in reader if len(row) == len(header)}


def load_mtat(root: PathLike, split: str, split_file: PathLike | None = None) -> list[tuple[Path, np.ndarray]]:
    """MagnaTagATune, top-50 tags, the split of Lee et al. 2017 / Won et al. 2020.

    ``root`` holds ``annotations_final.csv`` and the clip folders ``0`` .. ``f`` (directly
    or under ``mp3/``). ``split_file`` replaces the shipped list (one clip path per line).
    Returns ``(path, tags)`` with tags a (50,) int8 0/1 vector in :func:`mtat_tags` order.
    """
    base = _root(root, "MagnaTagATune")
    candidates = (base / "annotations_final.csv", base / "mp3" / "annotations_final.csv")
    ann = next((p for p in candidates if p.is_file()), None)
    if ann is None:
        raise DatasetError(f"MagnaTagATune: annotations_final.csv not found in {base} (nor in {base / 'mp3'})")
    audio = next((d for d in (base, base / "mp3") if any((d / c).is_dir() for c in MTAT_FOLDERS)), None)
    if audio is None:
        raise DatasetError(f"MagnaTagATune: clip folders 0..f not found in {base} (nor in {base / 'mp3'})")
    names = _lines(Path(split_file).read_text()) if split_file else mtat_split(split)
    labels = _mtat_annotations(ann)
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise DatasetError(f"MagnaTagATune: {len(unknown)} clips of the split are not in {ann}: {unknown[:3]}")
    return _require_files([(audio / n, labels[n]) for n in names], "MagnaTagATune", audio, False)


# ----------------------------------------------------------------------------- GTZAN


def gtzan_split(split: str) -> list[str]:
    """``<genre>/<genre>.<nnnnn>.wav`` paths of the fault-filtered GTZAN split."""
    _check_split(split, GTZAN_SPLITS, "GTZAN")
    return _lines(_split_text("gtzan", f"{split}_filtered.txt"))


def load_gtzan(root: PathLike, split: str, split_file: PathLike | None = None) -> list[tuple[Path, int]]:
    """GTZAN with the fault-filtered split of Kereliuk, Sturm & Larsen (2015).

    ``root`` holds the genre folders (``blues/`` ... ``rock/``), directly or under
    ``genres/`` or ``genres_original/``. Labels index :data:`GTZAN_GENRES`.
    """
    base = _root(root, "GTZAN")
    audio = next((d for d in (base, base / "genres", base / "genres_original") if (d / "blues").is_dir()), None)
    if audio is None:
        raise DatasetError(f"GTZAN: genre folders (blues/, classical/, ...) not found in {base}, "
                           f"{base / 'genres'} or {base / 'genres_original'}")
    names = _lines(Path(split_file).read_text()) if split_file else gtzan_split(split)
    items = []
    for n in names:
        genre = n.split("/")[0]
        if genre not in GTZAN_GENRES:
            raise DatasetError(f"GTZAN: {n!r} does not start with a GTZAN genre folder")
        items.append((audio / n, GTZAN_GENRES.index(genre)))
    return _require_files(items, "GTZAN", audio, False)


# ----------------------------------------------------------------------------- cover songs


def _index_audio(root: Path) -> dict[str, Path]:
    """File stem -> path for every audio file under ``root`` (first one wins, sorted walk)."""
    found: dict[str, Path] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = Path(dirpath) / name
            if p.suffix.lower() in AUDIO_EXTENSIONS:
                found.setdefault(p.stem, p)
    return found


def _shs_items(base: Path, ids: list[str], dataset: str, allow_missing: bool) -> list[tuple[Path, str]]:
    index = _index_audio(base)
    items = [(index.get(i, base / i), i.split("_")[0]) for i in ids]
    return _require_files(items, dataset, base, allow_missing)


def shs100k_sub_split(split: str) -> list[str]:
    """``<set_id>_<ver_id>`` ids of a shipped SHS100K-SUB split."""
    _check_split(split, SHS100K_SUB_SPLITS, "SHS100K-SUB")
    return _lines(_split_text("shs100k_sub", f"{split}.txt"))


def load_shs100k_sub(root: PathLike, split: str = "test", allow_missing: bool = False) -> list[tuple[Path, str]]:
    """SHS100K-SUB (the PEMR/MART papers' subset). Audio files are found anywhere under
    ``root`` by their name ``<set_id>_<ver_id>.<ext>``; the label is the work (set) id.

    Many SHS100K recordings can no longer be downloaded; ``allow_missing=True`` skips the
    ones not found (with a warning giving the count) instead of raising.
    """
    base = _root(root, "SHS100K-SUB")
    return _shs_items(base, shs100k_sub_split(split), "SHS100K-SUB", allow_missing)


def read_shs100k_list(list_file: PathLike) -> list[str]:
    """``<set_id>_<ver_id>`` ids from an SHS100K list (``set_id<TAB>ver_id`` or ``set_ver`` lines)."""
    p = Path(list_file)
    if not p.is_file():
        raise DatasetError(f"SHS100K: list file {p} does not exist (get SHS100K-TEST etc. from "
                           "github.com/NovaFrost/SHS100K2, folder meta/)")
    ids = []
    for ln in _lines(p.read_text()):
        parts = ln.replace("_", "\t").split("\t")
        if len(parts) < 2 or not parts[0].strip().isdigit() or not parts[1].strip().isdigit():
            raise DatasetError(f"SHS100K: {p}: cannot read line {ln!r} (expected 'set_id<TAB>ver_id')")
        ids.append(f"{int(parts[0])}_{int(parts[1])}")
    return ids


def load_shs100k(root: PathLike, list_file: PathLike, allow_missing: bool = False) -> list[tuple[Path, str]]:
    """Full SHS100K with the user's list file (e.g. ``SHS100K-TEST`` of NovaFrost/SHS100K2,
    not shipped: that repository has no licence). Audio as for :func:`load_shs100k_sub`."""
    base = _root(root, "SHS100K")
    return _shs_items(base, read_shs100k_list(list_file), "SHS100K", allow_missing)


def load_covers80(root: PathLike) -> list[tuple[Path, str]]:
    """Covers80: every audio file of ``covers32k/<work>/`` with its work folder as the id.

    ``root`` is the ``covers32k`` folder itself, or a folder holding ``covers32k/`` or
    ``coversongs/covers32k/``.
    """
    base = _root(root, "Covers80")
    folder = next((d for d in (base / "coversongs" / "covers32k", base / "covers32k", base) if d.is_dir()
                   and any(c.is_dir() for c in d.iterdir())), None)
    if folder is None:
        raise DatasetError(f"Covers80: no work folders found in {base} "
                           "(expected coversongs/covers32k/<work>/<version>.mp3)")
    items = []
    for work in sorted(d for d in folder.iterdir() if d.is_dir()):
        files = sorted(f for f in work.iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS)
        items += [(f, work.name) for f in files]
    if not items:
        raise DatasetError(f"Covers80: the work folders in {folder} hold no audio files")
    return items
