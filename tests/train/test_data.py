"""File lists, the decode-once cache, deterministic crops and the resumable sampler."""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import write_tracks

from musicembed.train.augment import AugmentConfig, Augmenter
from musicembed.train.data import (
    CropDataset,
    EpochBatchSampler,
    build_cache,
    cache_key,
    cached_pieces,
    list_tracks,
    make_loader,
    version_speeds,
)
from musicembed.train.loop import AugmentBatch


def singles(folder: Path, cache_dir: Path) -> list[list[Path]]:
    """Cached one-version pieces of every file in ``folder``."""
    pieces = list_tracks(folder)
    return cached_pieces(pieces, build_cache([p for [p] in pieces], cache_dir, 16000, progress=False))


def test_list_tracks_from_folder_list_and_manifest(audio_dir: Path, tmp_path: Path) -> None:
    pieces = list_tracks(audio_dir)
    files = [p for [p] in pieces]
    assert len(files) == 8 and files == sorted(files)
    listing = tmp_path / "files.txt"
    listing.write_text(f"# two tracks\n{files[0]}\n\n{files[1]}\n")
    assert list_tracks(listing) == pieces[:2]
    manifest = tmp_path / "manifest.csv"
    rows = [f"{os.path.relpath(p, tmp_path)},{'train' if i % 2 else 'test'}" for i, p in enumerate(files)]
    manifest.write_text("path,split\n" + "\n".join(rows) + "\n")
    assert [[p.resolve() for p in v] for v in list_tracks(manifest, "train")] == pieces[1::2]
    with pytest.raises(ValueError, match="split"):
        list_tracks(listing, "train")


def test_manifest_rows_sharing_a_track_id_are_versions_of_one_piece(audio_dir: Path, tmp_path: Path) -> None:
    files = [p for [p] in list_tracks(audio_dir)]
    manifest = tmp_path / "versions.csv"
    ids = ["a", "b", "a", "c", "a", "b", "", ""]  # an empty track_id leaves the row on its own
    manifest.write_text("path,track_id\n" + "".join(f"{p},{t}\n" for p, t in zip(files, ids)))
    pieces = list_tracks(manifest)
    assert pieces == [[files[0], files[2], files[4]], [files[1], files[5]], [files[3]], [files[6]], [files[7]]]
    cache = build_cache(files, tmp_path / "cache", 16000, progress=False)
    cached = cached_pieces(pieces, cache)
    assert cached[0] == [cache[files[0]], cache[files[2]], cache[files[4]]]
    assert cached_pieces([[tmp_path / "gone.wav"], [files[0]]], cache) == [[cache[files[0]]]]

    # Each view of a piece comes from its own version while there are enough of them.
    pcm = {c: np.lib.stride_tricks.sliding_window_view(np.load(c), 100) for c in cache.values()}

    def version_of(crop: torch.Tensor, candidates: list[Path]) -> Path:
        head = np.round(crop[:100].numpy() * 32767).astype(np.int16)
        found = [c for c in candidates if (pcm[c] == head).all(axis=1).any()]
        assert len(found) == 1
        return found[0]

    for epoch in range(3):
        ds = CropDataset(cached, 4000, views=2, seed=epoch)
        pair = ds[0, 1]
        assert {version_of(v, cached[1]) for v in pair} == set(cached[1])
        trio = CropDataset(cached, 4000, views=3, seed=epoch)[0, 0]
        assert {version_of(v, cached[0]) for v in trio} == set(cached[0])


def test_cache_decodes_once_and_notices_changes(tmp_path: Path) -> None:
    files = write_tracks(tmp_path / "audio", 2)
    bad = tmp_path / "audio" / "broken.wav"
    bad.write_bytes(b"not audio at all")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="broken.wav"):
        tracks = list(build_cache([*files, bad], cache, 16000, workers=1, progress=False).values())
    assert len(tracks) == 2
    pcm = np.load(tracks[0], mmap_mode="r")
    assert pcm.dtype == np.int16 and abs(len(pcm) - 1.5 * 16000) < 2
    stamp = tracks[0].stat().st_mtime_ns
    assert list(build_cache(files, cache, 16000, progress=False).values()) == tracks
    assert tracks[0].stat().st_mtime_ns == stamp
    parallel = build_cache(files, tmp_path / "cache2", 16000, workers=2, progress=False).values()
    assert [np.array_equal(np.load(a), np.load(b)) for a, b in zip(tracks, parallel)] == [True, True]
    os.utime(files[0], ns=(1, 1))
    assert cache_key(files[0], 16000) != tracks[0].stem
    assert cache_key(files[0], 22050) != cache_key(files[0], 16000)


def test_crops_depend_only_on_seed_epoch_and_index(audio_dir: Path, cache_dir: Path) -> None:
    tracks = singles(audio_dir, cache_dir)
    ds = CropDataset(tracks, 4000, views=2, seed=3)
    first = ds[0, 1]
    assert first.shape == (2, 4000) and first.dtype == torch.float32
    assert not torch.equal(first[0], first[1])
    assert torch.equal(CropDataset(tracks, 4000, views=2, seed=3)[0, 1], first)
    assert not torch.equal(ds[1, 1], first)
    padded = CropDataset(tracks, 10**6, views=1)[0, 0]
    assert padded.shape == (1, 10**6) and padded[0, -1000:].abs().sum() == 0


def test_loader_stream_is_the_same_with_workers_and_resumes(audio_dir: Path, cache_dir: Path) -> None:
    tracks = singles(audio_dir, cache_dir)
    serial = make_loader(tracks, 2000, 2, batch_size=3, workers=0, seed=1)
    parallel = make_loader(tracks, 2000, 2, batch_size=3, workers=2, seed=1)
    assert serial.steps_per_epoch == 2  # 8 tracks, the incomplete batch dropped
    # Three epochs from one stream (the workers start once), batch by batch as without workers.
    full = list(islice(serial.stream(4), 6))
    for a, b in zip(full, islice(parallel.stream(4), 6), strict=True):
        assert torch.equal(a, b)
    assert all(b.shape == (3, 2, 2000) for b in full)
    assert not torch.equal(full[0], full[2])  # a new epoch: new order and positions
    # A resumed stream: epoch 4 without its first batch, then epoch 5 on.
    tail = list(islice(serial.stream(4, skip_batches=1), 3))
    for a, b in zip(tail, full[1:4], strict=True):
        assert torch.equal(a, b)


def test_workers_augment_each_batch_as_the_training_process_would(audio_dir: Path, cache_dir: Path) -> None:
    """A transform given to the loader runs in the workers, on the batch of the optimizer step
    it is numbered with: the augmented stream equals augmenting the plain stream in process."""
    tracks = singles(audio_dir, cache_dir)
    augment = AugmentBatch(Augmenter(AugmentConfig(), 16000), 1600, seed=5, rank=0)
    window = augment.augmenter.in_samples(1600)
    plain = make_loader(tracks, window, 2, batch_size=3, workers=0, seed=1)
    in_workers = make_loader(tracks, window, 2, batch_size=3, workers=2, seed=1, transform=augment)
    expected = [augment(crops, step) for step, crops in enumerate(islice(plain.stream(4, skip_batches=1), 3), 9)]
    got = list(islice(in_workers.stream(4, skip_batches=1, first_step=9), 3))
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (3, 2, 1600)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0], augment(next(plain.stream(4, skip_batches=1)), 10), atol=1e-3)  # step seeds


def test_epoch_batch_sampler_splits_ranks_and_drops_incomplete_batches() -> None:
    shares = []
    for rank in range(2):
        s = EpochBatchSampler(10, rank, 2, seed=0, batch_size=2)
        s.start(3)
        shares.append(list(islice(s, 4)))
    for share in shares:  # 5 tracks per rank: two batches of 2 per epoch, epochs 3 then 4
        assert [len(b) for b in share] == [2, 2, 2, 2]
        assert {e for e, _ in share[0] + share[1]} == {3} and {e for e, _ in share[2] + share[3]} == {4}
    epoch3 = [{i for _, i in share[0] + share[1]} for share in shares]
    assert not epoch3[0] & epoch3[1]
    s = EpochBatchSampler(10, 0, 2, seed=0, batch_size=2)
    assert s.batches_per_epoch == 2 and len(s.indices(3)) == 5
    s.start(3, skip_batches=1)
    assert list(islice(s, 2)) == shares[0][1:3]


def test_aligned_views_of_two_versions_hold_the_same_point_of_the_score(tmp_path: Path) -> None:
    # Two renders of one "score" whose samples hold the score position they play (in units of
    # 1/100 s of score time): version b plays the score 1.25 times as fast as version a.
    rate, score_seconds = 1000, 300.0
    paths = {}
    for name, speed in (("a", 1.0), ("b", 1.25)):
        n = int(score_seconds * rate / speed)
        position = np.arange(n) * speed / rate * 100
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], position.astype(np.int16))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,track_id,tempo\na.npy,s,1.0\nb.npy,s,1.25\nc.npy,,\n")
    speeds = version_speeds(manifest)
    assert speeds == {tmp_path / "a.npy": 1.0, tmp_path / "b.npy": 1.25}
    assert version_speeds(tmp_path) == {}
    piece = [[paths["a"], paths["b"]]]
    crop = 2000
    aligned = CropDataset(piece, crop, views=2, seed=0, speeds=speeds)
    independent = CropDataset(piece, crop, views=2, seed=0)
    gaps = {True: [], False: []}
    for epoch in range(40):
        for is_aligned, ds in ((True, aligned), (False, independent)):
            centres = ds[epoch, 0][:, crop // 2].numpy() * 32767 / 100  # score seconds at each view's centre
            gaps[is_aligned].append(abs(centres[0] - centres[1]))
    assert max(gaps[True]) < 0.01
    assert np.median(gaps[False]) > 10  # independent crops of a 300-s score are rarely this close
    bad = tmp_path / "bad.csv"
    bad.write_text("path,tempo\na.npy,0\n")
    with pytest.raises(ValueError, match="above 0"):
        version_speeds(bad)
