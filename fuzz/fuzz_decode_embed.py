"""Fuzz the decode-and-embed path with atheris (libFuzzer for Python).

Each input is turned into either
- a file with an audio extension picked by the input (WAV, FLAC, OGG, MP3, AIFF, ...), its
  bytes the rest of the input, embedded by path; or
- a numpy array (dtype, shape and sample rate picked by the input, samples from its bytes),
  embedded as an array,
through ``Model.embed`` of a tiny PEMR model. The only acceptable failure is ``AudioError``
(naming the input and the reason); any other exception, a vector that is not finite or has
the wrong shape, or a native crash (libFuzzer reports the deadly signal) is a finding, and
libFuzzer writes the input to ``crash-<sha1>`` (replay: ``python fuzz_decode_embed.py FILE``).

Usage (see fuzz/README.md):
    python fuzz/fuzz_decode_embed.py --make-seeds fuzz/seeds
    python fuzz/fuzz_decode_embed.py -max_total_time=300 -max_len=65536 -timeout=30 fuzz/corpus fuzz/seeds
    python fuzz/fuzz_decode_embed.py --make-seeds SEEDS [libFuzzer flags and folders]   # both in one go
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["musicembed", "soundfile", "soxr"]):
    from musicembed.audio import AUDIO_EXTENSIONS
    from musicembed.config import EncoderConfig, FrontendConfig, ModelConfig
    from musicembed.errors import AudioError
    from musicembed.model import Model
    from musicembed.models import build_model

EXTENSIONS = sorted(AUDIO_EXTENSIONS) + [".bin"]
DTYPES = ["float32", "float64", "float16", "int16", "int32", "int8", "uint8", "int64", "bool", "complex64"]
RATES = [1, 999, 1000, 8000, 16000, 44100, 48000, 192000, 10**7]


def tiny_model() -> Model:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ModelConfig(method="pemr", name="fuzz", window_samples=8000,
                      frontend=FrontendConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=32),
                      encoder=EncoderConfig(channels=[8, 8], pools=[[4, 4], [4, 4]]))
    return Model(build_model(cfg), cfg, device="cpu")


MODEL = None


def _make_proxy():
    """libsndfile is not instrumented, so to libFuzzer every decoder looks like the same Python
    path and inputs reaching new formats, codecs, channel counts or failure reasons are thrown
    away. This function has one branch per (header fact, value): an input that reaches a new one
    is a new feature, and is kept."""
    import soundfile as sf

    lines = ["def proxy(fmt, subtype, channels, rate, frames, reason):"]
    for name in sorted(sf.available_formats()):
        lines.append(f"    if fmt == {name!r}: pass")
    for name in sorted(sf.available_subtypes()):
        lines.append(f"    if subtype == {name!r}: pass")
    for n in (0, 1, 2, 3, 8, 64, 256):
        lines.append(f"    if channels >= {n}: pass")
    for r in (0, 1000, 8000, 16000, 44100, 96000, 192000, 10**6):
        lines.append(f"    if rate >= {r}: pass")
    for f in (0, 1, 100, 10**4, 10**6, 10**8):
        lines.append(f"    if frames >= {f}: pass")
    for word in ("decod", "empty", "length 0", "malformed", "not a valid", "Format not recognised", "header",
                 "NaN", "non-finite", "channel", "Error", "sync", "unsupported"):
        lines.append(f"    if {word!r} in reason: pass")
    ns: dict = {}
    exec("\n".join(lines), ns)  # noqa: S102 - generated above from constants
    return atheris.instrument_func(ns["proxy"])


PROXY = _make_proxy()


def _header_facts(path: str, reason: str) -> None:
    import soundfile as sf

    try:
        i = sf.info(os.fsencode(path))
        PROXY(i.format, i.subtype, i.channels, i.samplerate, i.frames, reason)
    except Exception:  # noqa: BLE001 - unreadable header: only the reason counts
        PROXY("", "", -1, -1, -1, reason)


def _check(v: np.ndarray) -> None:
    if v.shape != (MODEL.embedding_dim,) or v.dtype != np.float32 or not np.isfinite(v).all():
        raise AssertionError(f"bad embedding: shape {v.shape} dtype {v.dtype} finite {np.isfinite(v).all()}")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():  # a file
        ext = fdp.PickValueInList(EXTENSIONS)
        fd, path = tempfile.mkstemp(prefix="musicembed-fuzz-", suffix=ext)
        with os.fdopen(fd, "wb") as f:
            f.write(fdp.ConsumeBytes(fdp.remaining_bytes()))
        reason = ""
        try:
            _check(MODEL.embed(path))
        except AudioError as e:
            if e.source != path or not e.reason:
                raise AssertionError(f"AudioError does not name the file: {e!r}") from None
            reason = e.reason
        try:
            _header_facts(path, reason)
        finally:
            os.unlink(path)
        return
    dtype = np.dtype(fdp.PickValueInList(DTYPES))  # an array
    rate = fdp.PickValueInList(RATES) if fdp.ConsumeBool() else fdp.ConsumeFloatInRange(-1e3, 4e5)
    channels = fdp.ConsumeIntInRange(0, 70)
    layout = fdp.ConsumeIntInRange(0, 3)
    raw = fdp.ConsumeBytes(min(fdp.remaining_bytes(), 1 << 16))
    raw = raw[: len(raw) // dtype.itemsize * dtype.itemsize]
    x = np.frombuffer(raw, dtype=dtype).copy()
    if channels and x.size >= channels:
        x = x[: x.size // channels * channels].reshape(-1, channels)
        x = x.T if layout == 1 else x[::-1] if layout == 2 else x
    elif layout == 3:
        x = x.reshape(1, 1, -1) if x.size else x.reshape(0, 1, 1)
    try:
        _check(MODEL.embed(x, sample_rate=rate))
    except AudioError as e:
        if e.source != "<array>":
            raise AssertionError(f"array error does not say <array>: {e!r}") from None


def make_seeds(folder: str) -> None:
    """Small valid files of every container and a few odd shapes, as a starting corpus."""
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    t = np.arange(2400) / 16000
    x = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    st = np.stack([x, -x], axis=1)
    specs = [("pcm16.wav", x, 16000, "WAV", "PCM_16"), ("float.wav", st, 16000, "WAV", "FLOAT"),
             ("u8.wav", x, 8000, "WAV", "PCM_U8"), ("ulaw.wav", x, 8000, "WAV", "ULAW"),
             ("imaadpcm.wav", x, 16000, "WAV", "IMA_ADPCM"), ("gsm.wav", x, 8000, "WAV", "GSM610"),
             ("s.flac", st, 44100, "FLAC", "PCM_16"), ("s24.flac", x, 16000, "FLAC", "PCM_24"),
             ("s.ogg", x, 16000, "OGG", "VORBIS"), ("s.opus", x, 48000, "OGG", "OPUS"),
             ("s.mp3", st, 44100, "MP3", "MPEG_LAYER_III"), ("s.aiff", x, 16000, "AIFF", "PCM_16"),
             ("s.au", x, 8000, "AU", "PCM_16"), ("s.caf", x, 16000, "CAF", "ALAC_16"),
             ("s.w64", x, 16000, "W64", "PCM_16"), ("ch8.wav", np.repeat(x[:200, None], 8, 1), 16000, "WAV", "PCM_16"),
             ("one.wav", x[:1], 16000, "WAV", "PCM_16"), ("zero.wav", x[:0], 16000, "WAV", "PCM_16")]
    for name, data, sr, fmt, subtype in specs:
        try:
            sf.write(os.path.join(folder, name), data, sr, format=fmt, subtype=subtype)
        except Exception as e:  # a codec this libsndfile lacks
            print(f"seed {name} skipped: {e}", file=sys.stderr)
    # As the harness reads them: atheris takes the bool (file or array) from the front of the input
    # and the extension's index from its end; the file's bytes are in between.
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith("seed-") or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            body = f.read()
        with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
            f.write(b"\x01" + body + bytes([EXTENSIONS.index(os.path.splitext(name)[1])]))
        os.unlink(path)


def main() -> None:
    global MODEL
    if len(sys.argv) >= 3 and sys.argv[1] == "--make-seeds":  # make seeds, then fuzz if flags follow
        make_seeds(sys.argv[2])
        del sys.argv[1:3]
        if len(sys.argv) == 1:
            return
    MODEL = tiny_model()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
