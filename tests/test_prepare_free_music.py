"""The free-music preparation's split by source, held-out halves and train-version parameters
(scripts/prepare_free_music.py; docs/data.md)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("soundfile")
pytest.importorskip("soxr")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prep():
    spec = importlib.util.spec_from_file_location("prepare_free_music", ROOT / "scripts" / "prepare_free_music.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# (source, tracks, hours) in the shape of the real set: large and small packages and corpus parts.
SIZES = [
    ("drascula-music", 31, 0.78), ("fb-music-high", 1, 0.06), ("flare-game", 12, 0.63),
    ("freedroidrpg-data", 16, 0.81), ("freeorion-data", 1, 0.17), ("planetblupi-music-ogg", 10, 1.17),
    ("supertux-data", 51, 1.63), ("supertuxkart-data", 38, 0.98), ("warzone2100-music", 30, 4.05),
    ("wesnoth-1.16-music", 40, 2.13), ("xblast-tnt-musics", 6, 0.05), ("widelands-data", 31, 1.7),
    ("warmux-data", 14, 0.5), ("pingus-data", 20, 0.4), ("tecnoballz-data", 15, 0.95),
    ("openttd-openmsx", 31, 1.2), ("xmoto-data", 7, 0.2), ("hex-a-hop-data", 3, 0.16),
    ("music21:airdsAirs", 60, 0.84), ("music21:bach", 80, 0.77), ("music21:beethoven", 6, 1.95),
    ("music21:chopin", 1, 0.02), ("music21:josquin", 8, 0.42), ("music21:monteverdi", 15, 0.78),
    ("music21:oneills1850", 60, 0.84), ("music21:palestrina", 15, 0.8), ("music21:trecento", 20, 1.2),
]


def sizes(prep, rows=SIZES):
    return [prep.SourceSize(*row) for row in rows]


@pytest.mark.parametrize("seed", range(8))
def test_holdout_meets_the_rule(prep, seed):
    entries = sizes(prep)
    by_name = {s.source: s for s in entries}
    halves, draw = prep.draw_holdout(entries, seed)
    select, report = set(halves["select"]), set(halves["report"])
    assert select and report and not select & report
    held = [by_name[n] for n in select | report]
    assert sum(s.tracks for s in held) >= prep.HOLDOUT_MIN_TRACKS
    assert sum(s.hours for s in held) >= prep.HOLDOUT_MIN_SHARE * sum(s.hours for s in entries)
    assert all(s.tracks >= prep.HOLDOUT_MIN_SOURCE_TRACKS for s in held)
    for half in (select, report):
        assert any(by_name[n].music21 for n in half)  # the covers task exists in both halves
        assert sum(not by_name[n].music21 for n in half) >= prep.HOLDOUT_MIN_PACKAGES
    counts = sorted(sum(by_name[n].tracks for n in half) for half in (select, report))
    assert draw < prep.HOLDOUT_MAX_DRAWS and counts[0] >= prep.HOLDOUT_BALANCE * counts[1]


def test_holdout_is_deterministic_and_seeded(prep):
    entries = sizes(prep)
    first = prep.draw_holdout(entries, 3)
    shuffled = list(entries)
    random.Random(1).shuffle(shuffled)
    assert prep.draw_holdout(shuffled, 3) == first  # the order of the entries does not matter
    assert prep.draw_holdout(entries, 3) == first
    assert len({str(prep.draw_holdout(entries, seed)[0]) for seed in range(8)}) > 1


def test_holdout_record_lists_the_draw(prep):
    entries = sizes(prep)
    halves, draw = prep.draw_holdout(entries, 0)
    record = prep.holdout_record(entries, 0, halves, draw)
    assert record["seed"] == 0 and record["draw"] == draw and "music21" in record["rule"]
    for half in ("select", "report"):
        assert [s["source"] for s in record[half]["sources"]] == halves[half]
        assert record[half]["tracks"] == sum(s["tracks"] for s in record[half]["sources"])
    assert record["held_out"]["share_of_hours"] >= prep.HOLDOUT_MIN_SHARE


def test_holdout_refuses_what_cannot_meet_the_rule(prep):
    one_part = [row for row in SIZES if not row[0].startswith("music21:")] + [("music21:bach", 80, 0.77)]
    with pytest.raises(ValueError, match="music21 parts"):
        prep.draw_holdout(sizes(prep, one_part), 0)
    small = [("music21:a", 10, 0.1), ("music21:b", 10, 0.1)] + [(f"pkg{i}", 10, 0.1) for i in range(6)]
    with pytest.raises(ValueError, match="do not reach"):
        prep.draw_holdout(sizes(prep, small), 0)
    with pytest.raises(ValueError, match="once"):
        prep.draw_holdout(sizes(prep, SIZES + SIZES[:1]), 0)


def test_splits_keep_held_out_sources_whole(prep):
    entries = []
    for source, n in (("pkg-a", 20), ("pkg-b", 12), ("pkg-c", 2)):
        for i in range(n):
            track_id = f"{source}__t{i}"
            entries.append(prep.Entry(f"audio/{source}/t{i}.flac", source, "GPL-2+", track_id, False,
                                      prep.DebianJob(source, f"/x/{source}/t{i}.ogg", Path("/tmp/x.flac"))))
    near_copies = {"pkg-a__t0", "pkg-a__t1"}
    split = prep.assign_splits(entries, 0, 0.1, near_copies, {"pkg-b": "report"})
    assert {split[f"pkg-b__t{i}"] for i in range(12)} == {"report"}
    a = [split[f"pkg-a__t{i}"] for i in range(20)]
    assert a.count("val") == 2 and set(a) == {"train", "val"}
    assert split["pkg-a__t0"] == split["pkg-a__t1"] == "train"
    assert {split["pkg-c__t0"], split["pkg-c__t1"]} == {"train"}  # too small for val
    assert split == prep.assign_splits(list(reversed(entries)), 0, 0.1, near_copies, {"pkg-b": "report"})


def test_train_versions_differ(prep):
    first = prep.render_params(0, "music21-bach__bwv1")[0]
    versions = prep.train_version_params(0, "music21-bach__bwv1", first, 4)
    assert len(versions) == 4
    families = [prep.gm_family(v.program) for v in versions]
    assert len(set(families)) == 4 and prep.gm_family(first.program) not in families
    assert all(v.program in prep.GM_PROGRAMS for v in versions)
    assert {v.soundfont for v in versions} == set(prep.SOUNDFONTS)
    transpositions = [v.transpose for v in versions]
    assert len(set(transpositions)) == 4 and first.transpose not in transpositions
    lo, hi = prep.TEMPO_RANGE
    assert all(lo <= v.tempo <= hi for v in versions)
    assert len({int((v.tempo - lo) / ((hi - lo) / 4)) for v in versions}) == 4  # one tempo quarter each
    assert versions == prep.train_version_params(0, "music21-bach__bwv1", first, 4)
    assert versions != prep.train_version_params(1, "music21-bach__bwv1", first, 4)
    covers = prep.render_params(0, "music21-bach__bwv1")[1:]
    assert not set(versions) & set(covers)
    most = prep.train_version_params(0, "music21-bach__bwv1", first, prep.MAX_TRAIN_VERSIONS)
    assert len({v.transpose for v in most}) == prep.MAX_TRAIN_VERSIONS
    with pytest.raises(ValueError):
        prep.train_version_params(0, "x", first, prep.MAX_TRAIN_VERSIONS + 1)


def test_package_midi_keeps_its_instruments(prep, tmp_path):
    mido = pytest.importorskip("mido")
    midi = mido.MidiFile(ticks_per_beat=96)
    for channel, program in ((0, 40), (1, 73), (9, 0)):
        track = mido.MidiTrack([mido.Message("program_change", channel=channel, program=program, time=0),
                                mido.Message("note_on", channel=channel, note=60, velocity=80, time=0),
                                mido.Message("note_off", channel=channel, note=60, velocity=0, time=96)])
        midi.tracks.append(track)
    src, dst = tmp_path / "in.mid", tmp_path / "out.mid"
    midi.save(src)
    params = prep.package_midi_params(0, "openttd-openmsx__x")
    assert params.program is None and params.tempo == 1.0 and params.transpose == 0
    prep.vary_midi(src, dst, params)
    out = mido.MidiFile(dst)
    programs = sorted(m.program for t in out.tracks for m in t if m.type == "program_change")
    notes = {m.note for t in out.tracks for m in t if m.type == "note_on"}
    assert programs == [0, 40, 73] and notes == {60}
    prep.vary_midi(src, dst, prep.RenderParams(6, "TimGM6mb", 1.0, 2))  # corpus works: one program for all
    out = mido.MidiFile(dst)
    melodic = {m.program for t in out.tracks for m in t if m.type == "program_change" and m.channel != 9}
    assert melodic == {6}
    assert {(m.channel == 9, m.note) for t in out.tracks for m in t if m.type == "note_on"} == {(False, 62), (True, 60)}
