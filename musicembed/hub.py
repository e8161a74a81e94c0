"""Weights: resolve a model reference to verified files, load them, save and publish them.

A reference is one of
- a name from ``weights_manifest.json`` (files bundled in the package, else the Hub repo
  the manifest names, through huggingface_hub's cache; ``HF_HUB_OFFLINE=1`` is honoured),
- a local directory holding ``config.json`` + ``model.safetensors`` (from ``save_pretrained``),
- ``hf-hub:<owner>/<repo>[@<revision>]``.

Every weights file is checked against a sha256 before it is read, and only safetensors
are loaded: nothing in a weights file can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .errors import WeightsError
from .io.atomic import atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CALIBRATION_NAME = "calibration.json"  # musicembed.calibration.CALIBRATION_NAME
HUB_PREFIX = "hf-hub:"


def _write_text(path: str, text: str) -> None:
    Path(path).write_text(text)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_relpath(name: str, what: str) -> str:
    """Reject file names that could leave their directory ('..', absolute, drive letters)."""
    p = PurePosixPath(name.replace("\\", "/"))
    if not name or p.is_absolute() or ".." in p.parts or ":" in name:
        raise WeightsError(f"{what}: refusing file name {name!r} (must be a relative path inside the model folder)")
    return str(p)


# ----------------------------------------------------------------------------- manifest


def _package_dir() -> Path:
    return Path(str(resources.files("musicembed")))


def read_manifest() -> dict[str, Any]:
    """The parsed ``weights_manifest.json`` shipped with the package."""
    return json.loads((_package_dir() / "weights_manifest.json").read_text())


def list_models() -> list[str]:
    """Names of the models in the manifest."""
    return sorted(read_manifest()["models"])


def model_entry(name: str) -> dict[str, Any]:
    models = read_manifest()["models"]
    if name not in models:
        known = ", ".join(sorted(models)) or "(none)"
        raise WeightsError(
            f"unknown model {name!r}. Known models: {known}. "
            "Pass a local directory with config.json + model.safetensors, or 'hf-hub:<owner>/<repo>[@revision]'."
        )
    return models[name]


def bundled_dir(entry: dict[str, Any]) -> Path | None:
    """The package folder holding an entry's files, if they are all there."""
    if not entry.get("bundled"):
        return None
    folder = _package_dir() / _safe_relpath(entry["bundled"], "manifest")
    names = [_safe_relpath(f["name"], "manifest") for f in entry["files"]]
    return folder if all((folder / n).is_file() for n in names) else None


def available_offline(name: str) -> bool:
    """True when the model's files are bundled or already in the Hugging Face cache."""
    entry = model_entry(name)
    if bundled_dir(entry) is not None:
        return True
    hub = entry.get("hub") or {}
    if not hub.get("repo_id"):
        return False
    from huggingface_hub import try_to_load_from_cache

    return all(
        isinstance(try_to_load_from_cache(hub["repo_id"], f["name"], revision=hub.get("revision")), str)
        for f in entry["files"]
    )


# ----------------------------------------------------------------------------- resolution


@dataclass
class Resolved:
    """Verified local files of one model."""

    config: ModelConfig
    weights: Path
    source: str
    calibration_sha256: str | None = None  # the manifest's checksum of calibration.json, when it lists one
    provenance: dict[str, Any] | None = None  # the manifest's licence, training data and model card, when any


def _verify(path: Path, expected: str | None, source: str) -> None:
    if not path.is_file():
        raise WeightsError(f"{source}: weights file {path} is missing")
    if not expected:
        raise WeightsError(
            f"{source}: no sha256 recorded for {path.name}; refusing unverified weights. "
            "Re-save the model with save_pretrained() (it records the checksum in config.json)."
        )
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{source}: checksum mismatch for {path} (expected sha256 {expected[:12]}..., got {actual[:12]}...). "
            "The file is corrupt, truncated or was modified: delete it and download or export it again "
            "(for a cached Hub file: `musicembed download NAME --force`)."
        )


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kB


def _read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; OSError or ValueError otherwise.
    Opened without blocking, so a FIFO in its place is refused instead of waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size} bytes, more than any config ({limit} bytes)")
        return f.read(limit + 1)


def _read_config(path: Path, source: str) -> tuple[ModelConfig, dict[str, Any]]:
    try:
        raw = json.loads(_read_small_file(path, MAX_CONFIG_BYTES))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        files = raw.pop("files", {})
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise ValueError('"files" must map each file name to {"sha256": ...}')
        return ModelConfig.from_dict(raw), files
    except FileNotFoundError:
        raise WeightsError(f"{source}: {CONFIG_NAME} not found in {path.parent}") from None
    except OSError as e:  # a folder, a symlink loop, no permission
        raise WeightsError(f"{source}: cannot read {path}: {e.strerror or e}") from None
    except RecursionError:
        raise WeightsError(f"{source}: invalid {CONFIG_NAME}: JSON nested too deeply") from None
    except (ValueError, TypeError) as e:  # ValueError: names the field and the reason
        raise WeightsError(f"{source}: invalid {CONFIG_NAME}: {e}") from None


def _resolve_dir(folder: Path, source: str, expected: dict[str, str] | None = None) -> Resolved:
    if expected and CONFIG_NAME in expected and (folder / CONFIG_NAME).is_file():
        _verify(folder / CONFIG_NAME, expected[CONFIG_NAME], source)  # before it is parsed
    config, files = _read_config(folder / CONFIG_NAME, source)
    weights_name = _safe_relpath(next(iter(files), WEIGHTS_NAME), source)
    # With a manifest, its checksum is the one that counts: config.json cannot vouch for other weights.
    sha = expected.get(weights_name) if expected else files.get(weights_name, {}).get("sha256")
    weights = folder / weights_name
    _verify(weights, sha, source)
    return Resolved(config=config, weights=weights, source=source,
                    calibration_sha256=(expected or {}).get(CALIBRATION_NAME))


class HubUnreachableError(WeightsError):
    """A file is needed from the Hub, which cannot be reached. ``problem`` and ``remedy`` are the
    two halves of the message."""

    def __init__(self, problem: str, remedy: str) -> None:
        super().__init__(f"{problem}: {remedy}")
        self.problem, self.remedy = problem, remedy


_unreachable: dict[str, str | None] = {}  # Hub host -> why it cannot be reached (None: it can), per process


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached (HF_HUB_OFFLINE, no name resolution, no connection), or
    None. One quick probe (5 s at most) per process, instead of the Hub client's retries."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    if host not in _unreachable:
        import socket

        try:
            socket.create_connection((host, port), timeout=5).close()
            _unreachable[host] = None
        except OSError as e:
            _unreachable[host] = f"{host} cannot be reached: {e.strerror or e}"
    return _unreachable[host]


def _hub_download(repo_id: str, filename: str, revision: str | None, source: str, force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = hub_unreachable()
    if offline and force:
        raise WeightsError(f"{source}: --force downloads again, but the Hub cannot be reached ({offline})")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, force_download=force,
                                    local_files_only=offline is not None))
    except LocalEntryNotFoundError:
        raise HubUnreachableError(
            f"{source}: {filename} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({offline or 'offline'})",
            f"run `musicembed download {source}` where the Hub can be reached, or copy the model folder "
            "(config.json + model.safetensors) here and load it by its path") from None
    except Exception as e:  # network, auth, missing repo or revision: all reported the same way
        raise WeightsError(f"{source}: could not fetch {filename} from the Hub repo {repo_id!r}: "
                           f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None


def _resolve_hub(repo_id: str, revision: str | None, source: str, expected: dict[str, str] | None = None,
                 force: bool = False) -> Resolved:
    cfg_path = _hub_download(repo_id, CONFIG_NAME, revision, source, force)
    if expected and CONFIG_NAME in expected:
        _verify(cfg_path, expected[CONFIG_NAME], source)  # before it is parsed
    config, files = _read_config(cfg_path, source)
    weights_name = _safe_relpath(next(iter(files), WEIGHTS_NAME), source)
    weights = _hub_download(repo_id, weights_name, revision, source, force)
    sha = expected.get(weights_name) if expected else files.get(weights_name, {}).get("sha256")
    _verify(weights, sha, source)
    calibration_sha = (expected or {}).get(CALIBRATION_NAME)
    if calibration_sha:  # beside the weights in the Hub cache, so the model finds it
        _verify(_hub_download(repo_id, CALIBRATION_NAME, revision, source, force), calibration_sha, source)
    return Resolved(config=config, weights=weights, source=source, calibration_sha256=calibration_sha)


def parse_hub_ref(ref: str) -> tuple[str, str | None]:
    """'hf-hub:owner/repo@rev' -> ('owner/repo', 'rev')."""
    body = ref[len(HUB_PREFIX):]
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise WeightsError(f"{ref}: expected 'hf-hub:<owner>/<repo>[@<revision>]'")
    return repo_id, revision or None


def is_path_reference(ref: str | os.PathLike) -> bool:
    """Whether a model reference names a folder by its form alone: a ``PathLike``, or text
    holding a path separator or starting with ``.`` (``./pemr``, ``runs/m``, ``/abs/m``)."""
    if isinstance(ref, os.PathLike):
        return True
    return os.sep in ref or bool(os.altsep and os.altsep in ref) or ref.startswith(".")


def resolve(ref: str | os.PathLike, force_download: bool = False) -> Resolved:
    """Turn a model reference into verified local files (downloading only when allowed).

    The rule: ``hf-hub:...`` is a Hub repository; a path reference (see
    :func:`is_path_reference`) is a folder; a bare name is a manifest name when the manifest
    has it (a folder of that name in the current directory is then ignored, with a warning
    that says how to load it: ``./NAME``), else a folder of that name, else unknown.
    """
    text = os.fspath(ref)
    if text.startswith(HUB_PREFIX) and not isinstance(ref, os.PathLike):
        repo_id, revision = parse_hub_ref(text)
        return _resolve_hub(repo_id, revision, text, force=force_download)
    if is_path_reference(ref) or text not in read_manifest()["models"]:
        if os.path.isdir(text):
            return _resolve_dir(Path(text), text)
        if is_path_reference(ref):
            raise WeightsError(f"{text}: no such model directory")
    elif os.path.isdir(text):
        import warnings

        warnings.warn(f"model {text!r}: using the manifest model; the folder {text!r} in the current directory "
                      f"is not used (load it as {os.path.join('.', text)!r})", stacklevel=3)
    entry = model_entry(text)
    expected = {_safe_relpath(f["name"], text): f["sha256"] for f in entry["files"]}
    folder = bundled_dir(entry)
    if folder is not None and not force_download:
        res = _resolve_dir(folder, text, expected)
    else:
        hub = entry.get("hub") or {}
        if not hub.get("repo_id"):
            raise WeightsError(f"{text}: the manifest lists no bundled files and no Hub repository for this model")
        res = _resolve_hub(hub["repo_id"], hub.get("revision"), text, expected, force=force_download)
    res.provenance = provenance(entry)
    return res


PROVENANCE_FIELDS = ("license", "training_data", "model_card", "figures", "recommendations")


def provenance(entry: dict[str, Any]) -> dict[str, Any]:
    """The licence of a manifest entry's weights, its training-data summary, its model card
    and where its figures come from (the fields of :data:`PROVENANCE_FIELDS` it has)."""
    return {k: entry[k] for k in PROVENANCE_FIELDS if entry.get(k)}


def load_state_dict(resolved: Resolved) -> dict[str, torch.Tensor]:
    redo = "re-export it with save_pretrained() or download it again, and record its new sha256"
    try:
        state = load_file(str(resolved.weights))
    except Exception as e:  # a file that passed its checksum but is not valid safetensors
        raise WeightsError(f"{resolved.source}: {resolved.weights} is not a valid safetensors file ({e}); "
                           f"{redo}") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # every embedding would be NaN, and each input would be blamed for it
        raise WeightsError(f"{resolved.source}: {resolved.weights} holds NaN or infinite values in "
                           f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; {redo}")
    return state


# ----------------------------------------------------------------------------- saving


def save_pretrained(model: nn.Module, directory: str | os.PathLike, config: ModelConfig | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float32, sha256 recorded) into ``directory``.

    ``model`` is a PEMR/MART inference module (or anything with ``.cfg``); returns the folder.
    """
    cfg = config or model.cfg
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    assert isinstance(cfg, ModelConfig)
    weights = out / WEIGHTS_NAME
    doc = cfg.to_dict()
    doc["files"] = {WEIGHTS_NAME: {"sha256": sha256_file(weights), "size": weights.stat().st_size}}
    atomic_write(out / CONFIG_NAME, lambda tmp: _write_text(tmp, json.dumps(doc, indent=2) + "\n"))
    return out


def push_to_hub(model: nn.Module, repo_id: str, *, token: str | None = None, private: bool = False,
                revision: str | None = None, commit_message: str = "Upload musicembed model") -> str:
    """Save the model to a temporary folder and upload it to the Hub repo; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(info)
