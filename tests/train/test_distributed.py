"""Two-process data-parallel training (torchrun, gloo on CPU) ends with identical weights on both ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from musicembed.train.config import TrainConfig, resolve
from musicembed.train.loop import list_checkpoints

# One torchrun launch trains both methods (process start-up dominates the test's time).
WORKER = """
import json, os, sys
import torch.distributed as dist
from safetensors.torch import save_file
from musicembed.train.loop import train
from musicembed.train.config import TrainConfig

dist.init_process_group("gloo")  # joined once; train() then uses it and leaves it open
for text in sys.argv[1:]:
    cfg = TrainConfig(**json.loads(text))
    result = train(cfg)
    state = {k: v.detach().contiguous() for k, v in result.objective.state_dict().items()}
    save_file(state, os.path.join(cfg.out, f"rank{os.environ['RANK']}.safetensors"))
dist.destroy_process_group()
"""
METHODS = ("pemr", "mart")


def test_two_ranks_end_identical(audio_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    configs = []
    for method in METHODS:
        model, objective, augment = resolve(method, ["tiny"])
        configs.append(TrainConfig(method=method, data=str(audio_dir), out=str(tmp_path / method), model=model,
                                   objective=objective, augment=augment, steps=3, batch_size=2, workers=0,
                                   device="cpu", cache_dir=str(cache_dir), progress=False))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *(json.dumps(c.__dict__) for c in configs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-5000:]
    for method in METHODS:
        run = tmp_path / method
        rank0, rank1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
        assert rank0.keys() == rank1.keys()
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), (method, name)
        (checkpoint,) = list_checkpoints(run)
        assert checkpoint.name == "step-00000003"
        saved = load_file(str(checkpoint / "module.safetensors"))
        assert all(torch.equal(saved[k], rank0[k]) for k in saved)
