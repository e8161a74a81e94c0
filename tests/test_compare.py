"""Similarity calibration, ``Model.compare`` and ``musicembed compare`` on real audio: the
bundled models with their shipped calibrations, and tiny models from the fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from musicembed import hub, load_model
from musicembed.calibration import CALIBRATION_NAME, RELATIONS, Calibration, catalog_prior, uniform_prior
from musicembed.cli.main import cli
from musicembed.errors import AudioError, WeightsError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "audio" / "supertuxkart-bay-excerpt.ogg"
SR = 22050
BUNDLED = ("pemr", "mart")


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name, device="cpu") for name in BUNDLED}


@pytest.fixture(scope="module")
def degraded_copy(tmp_path_factory) -> Path:
    """The example track at -6 dB, mono, through an MP3 round trip."""
    x, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    out = tmp_path_factory.mktemp("copies") / "bay-copy.mp3"
    sf.write(out, np.clip(0.5 * x.mean(axis=1), -1, 1), rate, format="MP3")
    return out


def _melody(seed: int, base: float, notes: int, seconds: float) -> list[tuple[float, float]]:
    """(frequency Hz, duration s) of a pentatonic melody drawn with ``seed`` from ``base`` up."""
    scale = [0, 2, 4, 7, 9, 12, 14, 16]
    steps = np.random.default_rng(seed).integers(0, len(scale), notes)
    return [(base * 2 ** (scale[i] / 12), seconds) for i in steps]


def _render(melody: list[tuple[float, float]], harmonics: list[tuple[int, float]], tempo: float = 1.0) -> np.ndarray:
    """Additive synthesis: each note a sum of ``(harmonic, amplitude)`` partials, plucked envelope."""
    out = []
    for f, d in melody:
        t = np.arange(int(d / tempo * SR)) / SR
        env = np.exp(-3 * t) * np.minimum(1, t / 0.01)
        out.append(env * sum(a * np.sin(2 * np.pi * f * k * t) for k, a in harmonics))
    x = np.concatenate(out)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


BRIGHT = [(1, 1.0), (2, 0.5), (3, 0.33), (4, 0.25)]  # a saw-like timbre
HOLLOW = [(1, 1.0), (3, 0.6), (5, 0.4), (7, 0.2)]  # odd partials: clarinet-like


@pytest.mark.parametrize("name", BUNDLED)
def test_degraded_copy_of_the_example_is_the_same_recording(models, degraded_copy, name):
    c = models[name].compare(EXAMPLE, degraded_copy)
    assert c.similarity > 0.99
    assert c.relation == "same_recording" and c.label == "same recording"
    assert 0.5 <= c.probability <= 1
    assert c.at_least["same_track"] >= c.at_least["same_recording"]
    assert c.model["fingerprint"] == models[name].fingerprint() and c.model["license"]
    assert (c.span is not None) == (name == "mart")


@pytest.mark.parametrize("name", BUNDLED)
def test_two_renders_of_one_melody_beat_two_melodies(models, name):
    a = _melody(0, 220.0, 40, 0.25)
    b = _melody(1, 523.0, 80, 0.125)
    m = models[name]
    for query, other in ((a, b), (b, a)):
        cover = m.compare(_render(query, BRIGHT), _render(query, HOLLOW, tempo=1.05), SR)
        different = m.compare(_render(query, BRIGHT), _render(other, HOLLOW, tempo=1.05), SR)
        assert cover.similarity > different.similarity


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("prior", [None, catalog_prior(10), catalog_prior(100_000)])
def test_calibration_is_monotonic_and_nested(models, name, prior):
    cal = models[name].calibration
    assert cal is not None and cal.model_fingerprint == models[name].fingerprint()
    sims = np.linspace(-1, 1, 801)
    curves = np.array([[cal.at_least(s, prior)[r] for r in RELATIONS] for s in sims])
    assert (np.diff(curves, axis=0) >= -1e-12).all()  # a higher similarity never lowers a probability
    assert (np.diff(curves, axis=1) >= -1e-12).all()  # a closer relation is never more likely
    assert np.allclose(curves[:, -1], 1.0)
    ranks = [RELATIONS.index(cal.relation(s, prior).relation) for s in sims]
    assert all(x >= y for x, y in zip(ranks, ranks[1:], strict=False))  # more specific as similarity grows


def test_a_rarer_relation_needs_more_similarity(models):
    cal = models["pemr"].calibration
    s = cal.threshold("same_track")
    assert s is not None
    assert cal.at_least(s, catalog_prior(100_000))["same_track"] < cal.at_least(s, uniform_prior())["same_track"]


def test_calibration_is_listed_with_its_checksum_and_checked(tmp_path, monkeypatch):
    entry = hub.model_entry("pemr")
    item = next(f for f in entry["files"] if f["name"] == CALIBRATION_NAME)
    path = Path(hub.bundled_dir(entry)) / CALIBRATION_NAME
    assert hub.sha256_file(path) == item["sha256"]
    assert Calibration.load(path, item["sha256"]).model_fingerprint
    with pytest.raises(WeightsError, match="checksum mismatch"):
        Calibration.load(path, "0" * 64)
    # a manifest whose calibration checksum does not match refuses to load the model
    manifest = hub.read_manifest()
    bad = json.loads(json.dumps(manifest))
    next(f for f in bad["models"]["pemr"]["files"] if f["name"] == CALIBRATION_NAME)["sha256"] = "0" * 64
    monkeypatch.setattr(hub, "read_manifest", lambda: bad)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model("pemr", device="cpu")


def test_calibration_does_not_change_the_fingerprint(models, tmp_path):
    folder = Path(hub.bundled_dir(hub.model_entry("pemr")))
    copy = tmp_path / "pemr-no-calibration"
    copy.mkdir()
    for f in (hub.CONFIG_NAME, hub.WEIGHTS_NAME):
        shutil.copyfile(folder / f, copy / f)
    bare = load_model(copy, device="cpu")
    assert bare.calibration is None
    assert bare.fingerprint() == models["pemr"].fingerprint()
    shutil.copyfile(folder / CALIBRATION_NAME, copy / CALIBRATION_NAME)  # a local folder carries its own
    assert load_model(copy, device="cpu").calibration is not None


def test_a_calibration_of_other_weights_is_not_used(pemr_dir, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(pemr_dir, copy)
    shutil.copyfile(Path(hub.bundled_dir(hub.model_entry("pemr"))) / CALIBRATION_NAME, copy / CALIBRATION_NAME)
    with pytest.warns(UserWarning, match="made for other weights"):
        m = load_model(copy, device="cpu")
    assert m.calibration is None


def test_compare_tiny_models_without_calibration(pemr_dir, mart_dir, audio_dir):
    p = load_model(pemr_dir, device="cpu")
    c = p.compare(audio_dir / "tone.wav", audio_dir / "chord.flac")
    assert -1 <= c.similarity <= 1 and c.relation is None and c.probability is None and c.span is None
    m = load_model(mart_dir, device="cpu")
    c = m.compare(audio_dir / "tone.wav", audio_dir / "noise.mp3", span_level=1)
    assert c.span is not None and c.span.level == 1
    assert 0 <= c.span.a_start < c.span.a_end <= 3.0 + 1e-6 and 0 <= c.span.b_start < c.span.b_end <= 4.0 + 1e-6
    with pytest.raises(ValueError, match="span_level"):
        m.compare(audio_dir / "tone.wav", audio_dir / "noise.mp3", span_level=7)
    same = m.compare(audio_dir / "tone.wav", audio_dir / "tone.wav")
    assert same.similarity == pytest.approx(1.0, abs=1e-6)


def test_compare_raises_the_audio_error_of_a_bad_file(pemr_dir, audio_dir, tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"\x00" * 2048)
    with pytest.raises(AudioError) as e:
        load_model(pemr_dir, device="cpu").compare(audio_dir / "tone.wav", bad)
    assert e.value.source.endswith("broken.mp3")


def test_cli_compare_prints_relation_and_json(degraded_copy):
    runner = CliRunner()
    res = runner.invoke(cli, ["compare", str(EXAMPLE), str(degraded_copy)])
    assert res.exit_code == 0, res.output
    assert "relation: same recording (probability 0." in res.output
    assert "licence: MIT" in res.output
    res = runner.invoke(cli, ["compare", str(EXAMPLE), str(degraded_copy), "--model", "mart", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["relation"] == "same_recording" and 0.5 <= d["probability"] <= 1
    assert set(d["at_least"]) == set(RELATIONS)
    assert d["span"]["level"] == 0 and d["span"]["a_end"] > d["span"]["a_start"]
    assert d["model"]["name"] == "mart" and d["model"]["version"] and d["model"]["license"]


def test_cli_compare_handles_bad_files_like_embed(pemr_dir, audio_dir, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00")
    res = runner.invoke(cli, ["compare", str(audio_dir / "tone.wav"), str(bad), "--model", str(pemr_dir)])
    assert res.exit_code == 1
    assert "broken.wav" in res.output and "failed" in res.output
    res = runner.invoke(cli, ["compare", str(audio_dir / "tone.wav"), str(tmp_path / "absent.wav"),
                              "--model", str(pemr_dir)])
    assert res.exit_code == 1 and "absent.wav" in res.output
    res = runner.invoke(cli, ["compare", str(audio_dir / "tone.wav"), str(audio_dir / "chord.flac"),
                              "--model", str(pemr_dir)])
    assert res.exit_code == 0 and "no calibration" in res.output
    res = runner.invoke(cli, ["compare", str(audio_dir / "tone.wav"), str(audio_dir / "chord.flac"),
                              "--model", str(pemr_dir), "--span-level", "2"])
    assert res.exit_code == 2


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory, degraded_copy) -> Path:
    """The example track and three synthesised melodies (the degraded copy stays outside)."""
    root = tmp_path_factory.mktemp("catalog")
    shutil.copyfile(EXAMPLE, root / EXAMPLE.name)
    for seed, base in ((0, 220.0), (1, 330.0), (2, 523.0)):
        sf.write(root / f"melody{seed}.wav", _render(_melody(seed, base, 48, 0.25), BRIGHT), SR)
    return root


def test_search_hits_carry_relation_and_filters(models, small_catalog, degraded_copy):
    from musicembed.catalog.index import Index

    pemr = models["pemr"]
    index = Index.build(pemr, [small_catalog], progress=False)
    hits = index.search(str(degraded_copy), k=4, model=pemr)
    assert hits[0].path.endswith(EXAMPLE.name) and hits[0].relation == "same_recording"
    assert all(h.relation is not None and 0.5 <= h.probability <= 1 for h in hits)
    assert hits[0].to_dict()["relation"] == "same_recording"
    same = index.search(str(degraded_copy), k=4, model=pemr, relation="same_recording")
    assert [h.path for h in same] == [hits[0].path]
    assert index.search(str(degraded_copy), k=4, model=pemr, min_prob=1.0) == []
    # a catalog of a million files makes the same similarity less telling than the uniform prior:
    # the reported relation is no more specific, and "at least same recording" is less likely
    big = index.search(str(degraded_copy), k=1, model=pemr, prior=catalog_prior(1_000_000))[0]
    assert big.path == hits[0].path and RELATIONS.index(big.relation) >= RELATIONS.index(hits[0].relation)
    sim = hits[0].score
    cal = pemr.calibration
    assert cal.at_least(sim, catalog_prior(1_000_000))["same_recording"] < cal.at_least(sim)["same_recording"]
    with pytest.raises(ValueError, match="relation must be one of"):
        index.search(str(degraded_copy), k=1, model=pemr, relation="sibling")


def test_cli_search_relation_filters(models, small_catalog, degraded_copy, tmp_path, pemr_dir, audio_dir):
    runner = CliRunner()
    idx = tmp_path / "c.index.npz"
    r = runner.invoke(cli, ["index", str(small_catalog), "--out", str(idx), "--model", "pemr"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["search", str(degraded_copy), "--index", str(idx), "-k", "4"])
    assert r.exit_code == 0, r.output
    assert "(same recording, p=0." in r.output
    r = runner.invoke(cli, ["search", str(degraded_copy), "--index", str(idx), "-k", "4", "--json",
                            "--relation", "same_recording"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [h["relation"] for h in doc["results"]] == ["same_recording"]
    assert doc["model_version"] == hub.model_entry("pemr")["version"]
    assert doc["model_fingerprint"] == models["pemr"].fingerprint()
    assert doc["model_license"].startswith("MIT")
    tiny = tmp_path / "t.index.npz"
    assert runner.invoke(cli, ["index", str(audio_dir), "--out", str(tiny), "--model", str(pemr_dir)]).exit_code == 0
    r = runner.invoke(cli, ["search", str(audio_dir / "tone.wav"), "--index", str(tiny), "--min-prob", "0.9"])
    assert r.exit_code == 2 and "no calibration" in r.output


def test_outputs_and_card_record_version_licence_and_provenance(models, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bay.jsonl"
    r = runner.invoke(cli, ["embed", str(EXAMPLE), "--out", str(out)])
    assert r.exit_code == 0, r.output
    line = json.loads(out.read_text().splitlines()[0])
    assert line["model_version"] == hub.model_entry("pemr")["version"]
    assert line["model_fingerprint"] == models["pemr"].fingerprint()
    assert line["model_license"] == hub.model_entry("pemr")["license"]
    card = models["mart"].card
    assert card["license"].startswith("MIT") and card["training_data"] and card["model_card"] == "docs/models/mart.md"
    assert card["figures"] and card["calibration"]["thresholds"]["same_recording"] is not None
    assert card["recommendations"] == hub.model_entry("mart")["recommendations"]
    r = runner.invoke(cli, ["models"])
    assert r.exit_code == 0 and "licence: MIT" in r.output and "figures:" in r.output
    r = runner.invoke(cli, ["models", "--json"])
    recs = json.loads(r.output)["mart"]["recommendations"]
    assert set(recs) == {"same_track", "covers", "robustness", "source"}
    assert all(v["advice"] and v["vectors"] for v in recs.values())
