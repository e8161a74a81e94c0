"""Dataset loaders on fake folder trees, and the shipped split files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from musicembed.eval import datasets as ds
from musicembed.eval.datasets import DatasetError


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_shipped_splits_have_published_sizes_and_are_disjoint() -> None:
    mtat = {s: ds.mtat_split(s) for s in ds.MTAT_SPLITS}
    assert [len(mtat[s]) for s in ds.MTAT_SPLITS] == [15244, 1529, 4332]
    assert not set(mtat["train"]) & set(mtat["test"]) and not set(mtat["valid"]) & set(mtat["test"])
    assert all(p.endswith(".mp3") and p[0] in "0123456789abcdef" for p in mtat["test"])
    assert len(ds.mtat_tags()) == 50 and "no vocals" in ds.mtat_tags()
    gtzan = {s: ds.gtzan_split(s) for s in ds.GTZAN_SPLITS}
    assert [len(gtzan[s]) for s in ds.GTZAN_SPLITS] == [443, 197, 290]
    shs = {s: ds.shs100k_sub_split(s) for s in ds.SHS100K_SUB_SPLITS}
    assert [len(shs[s]) for s in ds.SHS100K_SUB_SPLITS] == [10003, 1004, 1004]
    works = {s: {i.split("_")[0] for i in shs[s]} for s in shs}
    assert len(works["train"] | works["val"] | works["test"]) == 1088
    assert not works["train"] & works["test"]
    with pytest.raises(ValueError, match="unknown split"):
        ds.mtat_split("val")


def _fake_mtat(root: Path, clips: list[str]) -> None:
    tags = ds.mtat_tags()
    header = ["clip_id", "extra tag", *tags, "mp3_path"]
    with open(root / "annotations_final.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
        w.writerow(header)
        for i, clip in enumerate(clips):
            w.writerow([i, 1, *[int(j == i % 50) for j in range(50)], clip])
            _touch(root / "mp3" / clip)


def test_load_mtat_with_split_file(tmp_path: Path) -> None:
    clips = [f"{d}/artist-album-0{k}-song-0-29.mp3" for d in "0af" for k in range(3)]
    _fake_mtat(tmp_path, clips)
    split = tmp_path / "mine.txt"
    split.write_text("\n".join(clips[:4]) + "\n")
    items = ds.load_mtat(tmp_path, "train", split_file=split)
    assert [p for p, _ in items] == [tmp_path / "mp3" / c for c in clips[:4]]
    labels = np.stack([y for _, y in items])
    assert labels.shape == (4, 50) and labels.dtype == np.int8
    np.testing.assert_array_equal(labels.argmax(axis=1), [0, 1, 2, 3])


def test_load_mtat_shipped_split(tmp_path: Path) -> None:
    _fake_mtat(tmp_path, ds.mtat_split("valid"))
    items = ds.load_mtat(tmp_path, "valid")
    assert len(items) == 1529 and all(p.is_file() for p, _ in items[:5])


def test_load_mtat_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ds.load_mtat(tmp_path / "nope", "train")
    with pytest.raises(DatasetError, match="annotations_final.csv"):
        ds.load_mtat(tmp_path, "train")
    clips = ["0/a-0-29.mp3", "0/b-0-29.mp3"]
    _fake_mtat(tmp_path, clips)
    (tmp_path / "mp3" / clips[1]).unlink()
    split = tmp_path / "s.txt"
    split.write_text("\n".join(clips))
    with pytest.raises(DatasetError, match=r"1 of 2 audio files are missing.*b-0-29"):
        ds.load_mtat(tmp_path, "test", split_file=split)
    split.write_text("0/unknown.mp3\n")
    with pytest.raises(DatasetError, match="not in"):
        ds.load_mtat(tmp_path, "test", split_file=split)


@pytest.mark.parametrize("sub", ["", "genres", "genres_original"])
def test_load_gtzan(tmp_path: Path, sub: str) -> None:
    base = tmp_path / sub if sub else tmp_path
    for split in ds.GTZAN_SPLITS:
        for name in ds.gtzan_split(split):
            _touch(base / name)
    items = ds.load_gtzan(tmp_path, "test")
    assert len(items) == 290
    path, label = items[0]
    assert path.parent.name == ds.GTZAN_GENRES[label]
    assert sorted({y for _, y in ds.load_gtzan(tmp_path, "train")}) == list(range(10))


def test_load_gtzan_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="genre folders"):
        ds.load_gtzan(tmp_path, "train")
    _touch(tmp_path / "blues" / "blues.00000.wav")
    with pytest.raises(DatasetError, match="missing"):
        ds.load_gtzan(tmp_path, "valid")


def test_load_shs100k_sub_finds_files_anywhere(tmp_path: Path) -> None:
    ids = ds.shs100k_sub_split("test")
    for k, i in enumerate(ids):
        _touch(tmp_path / f"part{k % 3}" / (f"{i}.mp3" if k % 2 else f"{i}.wav"))
    items = ds.load_shs100k_sub(tmp_path, "test")
    assert len(items) == 1004
    assert all(p.stem == i and w == i.split("_")[0] for (p, w), i in zip(items, ids, strict=True))


def test_load_shs100k_sub_missing(tmp_path: Path) -> None:
    ids = ds.shs100k_sub_split("val")
    for i in ids[:-3]:
        _touch(tmp_path / f"{i}.mp3")
    with pytest.raises(DatasetError, match="3 of 1004"):
        ds.load_shs100k_sub(tmp_path, "val")
    with pytest.warns(UserWarning, match="skipping 3 of 1004"):
        items = ds.load_shs100k_sub(tmp_path, "val", allow_missing=True)
    assert len(items) == 1001


def test_load_shs100k_with_user_list(tmp_path: Path) -> None:
    lst = tmp_path / "SHS100K-TEST"
    lst.write_text("8110\t0\n8110\t1\n12_3\n")
    for i in ("8110_0", "8110_1", "12_3"):
        _touch(tmp_path / "audio" / f"{i}.m4a.mp3")  # stem keeps the inner dot: not found
        _touch(tmp_path / "audio" / f"{i}.flac")
    items = ds.load_shs100k(tmp_path, lst)
    assert [(p.name, w) for p, w in items] == [("8110_0.flac", "8110"), ("8110_1.flac", "8110"), ("12_3.flac", "12")]
    with pytest.raises(DatasetError, match="NovaFrost"):
        ds.load_shs100k(tmp_path, tmp_path / "absent")
    lst.write_text("eight\tzero\n")
    with pytest.raises(DatasetError, match="cannot read line"):
        ds.load_shs100k(tmp_path, lst)


@pytest.mark.parametrize("layout", ["coversongs/covers32k", "covers32k", ""])
def test_load_covers80(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / layout if layout else tmp_path
    for work in ("A_Whiter_Shade_Of_Pale", "Abraham_Martin_And_John"):
        for version in ("procol_harum+x+01", "annie_lennox+y+05"):
            _touch(folder / work / f"{version}.mp3")
    (folder / "A_Whiter_Shade_Of_Pale" / "notes.txt").write_text("not audio")
    items = ds.load_covers80(tmp_path)
    assert len(items) == 4
    assert [w for _, w in items] == ["A_Whiter_Shade_Of_Pale"] * 2 + ["Abraham_Martin_And_John"] * 2


def test_load_covers80_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no work folders"):
        ds.load_covers80(tmp_path)
    (tmp_path / "covers32k" / "empty").mkdir(parents=True)
    with pytest.raises(DatasetError, match="hold no audio"):
        ds.load_covers80(tmp_path)
