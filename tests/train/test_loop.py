"""Training end to end on generated audio: CLI runs, exact resume, signals, export + load_model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import musicembed
from musicembed.train import loop
from musicembed.train.cli import train_command
from musicembed.train.config import TrainConfig, resolve
from musicembed.train.loop import AugmentBatch, augment_place, learning_rate, list_checkpoints, train


def losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "log.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def invoke(*args: str) -> str:
    result = CliRunner().invoke(train_command, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("method", "extra"),
    [("pemr", []), ("pemr", ["--mask", "none"]), ("pemr", ["--mask", "pos", "--ratio", "0.3"]), ("mart", []),
     ("mart", ["--no-pwt", "--no-hcl"]), ("mart", ["--pw-weight", "0.01"]), ("mart", ["--positives", "separate"])],
)
def test_train_export_load_embed(method: str, extra: list[str], audio_dir: Path, cache_dir: Path,
                                 tmp_path: Path) -> None:
    run, model_dir = tmp_path / "run", tmp_path / "model"
    invoke(method, "--data", str(audio_dir), "--out", str(run), "--config", "tiny", "--steps", "3",
           "--batch-size", "4", "--workers", "0", "--cache-dir", str(cache_dir), "--no-progress", *extra)
    rows = losses(run)
    assert [s for s, _ in rows] == [1, 2, 3] and all(np.isfinite(v) for _, v in rows)
    if method == "mart":
        objective = json.loads((run / "run.json").read_text())["objective"]
        assert objective["pw_weight"] == (0.01 if "--pw-weight" in extra else 1.0)
        assert objective["positives"] == ("separate" if "--positives" in extra else "joint")
    invoke("export", str(run), "--out", str(model_dir))
    model = musicembed.load_model(str(model_dir))
    vec = model.embed(str(sorted(audio_dir.iterdir())[0]))
    assert vec.shape == (16,) and np.isfinite(vec).all()


@pytest.mark.parametrize("method", ["pemr", "mart"])
def test_resume_continues_exactly(method: str, audio_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    model, objective, augment = resolve(method, ["tiny"])

    def config(out: Path, steps: int) -> TrainConfig:
        return TrainConfig(method=method, data=str(audio_dir), out=str(out), model=model, objective=objective,
                           augment=augment, steps=steps, batch_size=3, workers=0, checkpoint_every=100,
                           cache_dir=str(cache_dir), progress=False)

    train(config(tmp_path / "straight", 5))  # 2 steps per epoch: the split below is mid-epoch
    train(config(tmp_path / "split", 3))
    with pytest.raises(FileExistsError):
        train(config(tmp_path / "split", 5))
    train(config(tmp_path / "split", 5), resume=True)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["step-00000003", "step-00000005"]


class _PidRecordingAugment(AugmentBatch):
    """AugmentBatch that appends the id of the process it runs in to ``PID_LOG``."""

    PID_LOG: Path

    def __call__(self, crops: torch.Tensor, step: int) -> torch.Tensor:
        with open(self.PID_LOG, "a") as f:
            f.write(f"{os.getpid()}\n")
        return super().__call__(crops, step)


def test_augmenting_in_workers_trains_like_augmenting_in_process(audio_dir: Path, cache_dir: Path,
                                                                 tmp_path: Path, monkeypatch) -> None:
    """--augment-in workers moves the augmentation, not its draws: it runs in another process,
    the losses match the in-process run, and a resumed workers run continues exactly."""
    model, objective, augment = resolve("pemr", ["tiny"])
    monkeypatch.setattr(loop, "AugmentBatch", _PidRecordingAugment)

    def config(out: Path, steps: int, where: str) -> TrainConfig:
        return TrainConfig(method="pemr", data=str(audio_dir), out=str(out), model=model, objective=objective,
                           augment=augment, steps=steps, batch_size=3, workers=1, augment_in=where,
                           checkpoint_every=100, cache_dir=str(cache_dir), progress=False)

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() + 1)  # more than a workers run leaves itself
    pids = {}
    for where in ("device", "workers"):
        _PidRecordingAugment.PID_LOG = tmp_path / f"{where}.pids"
        train(config(tmp_path / where, 4, where))
        pids[where] = set(_PidRecordingAugment.PID_LOG.read_text().split())
    assert pids["device"] == {str(os.getpid())}
    assert torch.get_num_threads() == os.cpu_count() + 1  # the workers run gave its threads back
    torch.set_num_threads(threads)
    assert pids["workers"] and str(os.getpid()) not in pids["workers"]
    device, workers = losses(tmp_path / "device"), losses(tmp_path / "workers")
    assert [s for s, _ in workers] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in workers], [v for _, v in device], rtol=1e-4)
    train(config(tmp_path / "split", 3, "workers"))
    train(config(tmp_path / "split", 4, "workers"), resume=True)
    assert losses(tmp_path / "split") == workers


def test_augment_place(tmp_path: Path) -> None:
    old_run = {"method": "pemr", "data": "music", "out": str(tmp_path), "model": {}, "workers": 2}
    (tmp_path / "run.json").write_text(json.dumps(old_run))
    assert TrainConfig.load(tmp_path).augment_in == "device"  # where runs without the setting augmented
    assert augment_place("workers", 1) == "workers"
    assert augment_place("device", 0) == "device"
    with pytest.raises(ValueError, match="--workers 1"):
        augment_place("workers", 0)
    with pytest.raises(ValueError, match="workers or device"):
        augment_place("gpu", 1)


def test_learning_rate_decays_along_a_half_cosine(tmp_path: Path) -> None:
    cfg = TrainConfig(method="pemr", data="music", out=str(tmp_path), model={}, lr=1e-3, steps=10, lr_decay_from=6)
    rates = [learning_rate(cfg, s) for s in range(11)]
    np.testing.assert_allclose(rates, [1e-3] * 7 + [8.5355e-4, 5e-4, 1.4645e-4, 0.0], rtol=1e-4, atol=1e-12)
    assert learning_rate(TrainConfig(method="pemr", data="m", out="o", model={}, lr=1e-3), 10**6) == 1e-3
    with pytest.raises(ValueError, match="needs --steps"):
        learning_rate(TrainConfig(method="pemr", data="m", out="o", model={}, lr_decay_from=5), 0)


def test_copied_run_anneals_on_resume_and_leaves_the_original(audio_dir: Path, cache_dir: Path,
                                                               tmp_path: Path) -> None:
    """--resume --lr-decay-from anneals a run trained at a constant rate; a copied run folder
    resumes into itself, not into the folder it was copied from."""
    first, copy = tmp_path / "first", tmp_path / "copy"
    invoke("pemr", "--data", str(audio_dir), "--out", str(first), "--config", "tiny", "--steps", "3",
           "--batch-size", "4", "--workers", "0", "--cache-dir", str(cache_dir), "--no-progress", "--lr", "0.001")
    shutil.copytree(first, copy)
    invoke("pemr", "--out", str(copy), "--resume", "--steps", "7", "--lr-decay-from", "3", "--no-progress")
    with open(copy / "log.csv", newline="") as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f)]
    np.testing.assert_allclose(rates, [1e-3] * 4 + [8.5355e-4, 5e-4, 1.4645e-4], rtol=1e-4)
    assert [s for s, _ in losses(first)] == [1, 2, 3]
    assert [p.name for p in list_checkpoints(first)] == ["step-00000003"]
    assert json.loads((copy / "run.json").read_text())["out"] == str(copy)


def test_sigterm_checkpoints_and_resumes(audio_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"

    def terminate_after_three_steps() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            if (run / "log.csv").exists() and len(losses(run)) >= 3:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=terminate_after_three_steps, daemon=True)
    watcher.start()
    result = CliRunner().invoke(
        train_command,
        ["pemr", "--data", str(audio_dir), "--out", str(run), "--config", "tiny", "--steps", "100000",
         "--batch-size", "4", "--workers", "1", "--cache-dir", str(cache_dir), "--no-progress",
         "--checkpoint-every", "100000"],
    )
    watcher.join()
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    (checkpoint,) = list_checkpoints(run)
    step = int(checkpoint.name.split("-")[1])
    assert step >= 3 and "--resume" in result.output
    invoke("pemr", "--out", str(run), "--resume", "--steps", str(step + 2), "--workers", "0")
    assert [s for s, _ in losses(run)] == list(range(1, step + 3))


def test_init_from_exported_model(audio_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    common = ["--data", str(audio_dir), "--config", "tiny", "--batch-size", "4", "--workers", "0",
              "--cache-dir", str(cache_dir), "--no-progress", "--mask", "none"]
    invoke("pemr", "--out", str(tmp_path / "first"), "--steps", "2", *common)
    invoke("export", str(tmp_path / "first"), "--out", str(tmp_path / "first-model"))
    trained = musicembed.load_model(str(tmp_path / "first-model"), device="cpu").net.state_dict()

    # lr 0: Adam leaves the weights where they started, so the export shows what the run started from
    for name, init in (("cont", ["--init-from", str(tmp_path / "first-model")]), ("fresh", [])):
        invoke("pemr", "--out", str(tmp_path / name), "--steps", "1", "--lr", "0", *common, *init)
        invoke("export", str(tmp_path / name), "--out", str(tmp_path / f"{name}-model"))
    cont = musicembed.load_model(str(tmp_path / "cont-model"), device="cpu")
    fresh = musicembed.load_model(str(tmp_path / "fresh-model"), device="cpu").net.state_dict()
    convs = [k for k, v in trained.items() if k.endswith("weight") and v.dim() == 4]
    assert convs and all(torch.equal(cont.net.state_dict()[k], trained[k]) for k in convs)
    assert not any(torch.equal(fresh[k], trained[k]) for k in convs)
    run = json.loads((tmp_path / "cont" / "run.json").read_text())
    assert "version" not in run["model"]  # the base's version is not the new weights'
    record = run["init_from"]
    assert record["model"] == str(tmp_path / "first-model")
    assert record["sha256"] == json.loads((tmp_path / "first-model" / "config.json").read_text())[
        "files"]["model.safetensors"]["sha256"]
    assert "starting from" in json.loads((tmp_path / "cont-model" / "config.json").read_text())["description"]

    # resuming keeps the run's own weights; a wrong method or a missing model is a usage error
    invoke("pemr", "--out", str(tmp_path / "cont"), "--resume", "--steps", "2", "--no-progress")
    for method, ref in (("mart", str(tmp_path / "first-model")), ("pemr", str(tmp_path / "missing"))):
        result = CliRunner().invoke(train_command, [method, "--out", str(tmp_path / "bad"), "--init-from", ref,
                                                    *common[:-2]])
        assert result.exit_code == 2 and "--init-from" in result.output, result.output


def test_align_versions_needs_speeds_and_trains_on_a_manifest(audio_dir: Path, cache_dir: Path,
                                                              tmp_path: Path) -> None:
    common = ["--config", "tiny", "--steps", "2", "--batch-size", "2", "--workers", "0", "--cache-dir",
              str(cache_dir), "--no-progress", "--align-versions"]
    result = CliRunner().invoke(train_command, ["pemr", "--data", str(audio_dir), "--out", str(tmp_path / "a"),
                                                *common])
    assert result.exit_code != 0 and "'tempo' column" in result.output
    files = sorted(audio_dir.iterdir())[:4]
    manifest = tmp_path / "versions.csv"
    manifest.write_text("path,track_id,tempo\n" + "".join(
        f"{f},{'ab'[i // 2]},{1.0 + 0.1 * i}\n" for i, f in enumerate(files)))
    invoke("pemr", "--data", str(manifest), "--out", str(tmp_path / "b"), *common)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["align_versions"] is True
    assert [s for s, _ in losses(tmp_path / "b")] == [1, 2]
