"""Worker process of the musicnn baseline (:class:`musicembed.eval.systems.MusicnnEmbedder`).

Runs under an interpreter that has musicnn and TensorFlow with Keras 2, not musicembed's
(it imports neither torch nor musicembed). Usage: ``python musicnn_worker.py LAYER THREADS``.
It builds musicnn's MTT_musicnn graph once, restores its shipped weights and then answers
one JSON line per request on stdout:

- first, unasked: ``{"ready": true, "dim": D, "identity": {...}}`` (versions and the
  checkpoint's sha256, for the evaluation's cache key);
- request ``{"files": [path, ...]}`` -> ``{"results": [{"vector": [...]} | {"error": "..."}]}``.

A file's vector is the mean over its non-overlapping 3-s patches of the layer's activations
(musicnn's own preprocessing: librosa decoding at 16 kHz, 96-band mel of a 512-point STFT
with hop 256, log10(10000 x + 1), here in float32: musicnn's float16 overflows to
infinity on loud frames). A file shorter than one patch is padded with
silence to one patch. Everything the libraries print goes to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

PATCH_SECONDS = 3.0
BATCH_PATCHES = 64


def main() -> None:
    layer, threads = sys.argv[1], int(sys.argv[2])
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints must not mix with the replies
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn uses tf.compat.v1.layers (Keras 2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import librosa
    import musicnn
    import numpy as np
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import models

    tf.compat.v1.disable_eager_execution()
    n_frames = librosa.time_to_frames(PATCH_SECONDS, sr=config.SR, n_fft=config.FFT_SIZE,
                                      hop_length=config.FFT_HOP) + 1
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, config.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        outputs = models.define_model(x, is_training, "MTT_musicnn", len(config.MTT_LABELS))
    names = ("logits", "timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool", "penultimate")
    target = dict(zip(names, outputs, strict=True))[layer]
    session = tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                                                   inter_op_parallelism_threads=1))
    session.run(tf.compat.v1.global_variables_initializer())
    ckpt = os.path.join(os.path.dirname(musicnn.__file__), "MTT_musicnn")
    tf.compat.v1.train.Saver().restore(session, ckpt + "/")
    digest = hashlib.sha256()
    for name in sorted(os.listdir(ckpt)):
        with open(os.path.join(ckpt, name), "rb") as f:
            digest.update(f.read())

    def patches(path: str) -> np.ndarray:
        audio, sr = librosa.load(path, sr=config.SR)
        mel = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=config.FFT_HOP, n_fft=config.FFT_SIZE,
                                             n_mels=config.N_MELS).T.astype(np.float32)
        rep = np.log10(10000 * mel + 1)  # musicnn computes this in float16, which overflows to inf on loud frames
        if len(rep) < n_frames:
            rep = np.concatenate([rep, np.zeros((n_frames - len(rep), rep.shape[1]), rep.dtype)])
        count = len(rep) // n_frames
        return rep[: count * n_frames].reshape(count, n_frames, rep.shape[1])

    def vector(path: str) -> list[float]:
        batch = patches(path)
        acts = [session.run(target, feed_dict={x: batch[i : i + BATCH_PATCHES], is_training: False})
                for i in range(0, len(batch), BATCH_PATCHES)]
        return np.concatenate(acts).reshape(len(batch), -1).mean(axis=0).astype(np.float64).tolist()

    silence = np.zeros((1, n_frames, config.N_MELS), np.float32)
    dim = int(np.prod(session.run(target, feed_dict={x: silence, is_training: False}).shape[1:]))
    identity = {"model": "MTT_musicnn", "layer": layer, "musicnn": getattr(musicnn, "__version__", "0.1.0"),
                "tensorflow": tf.__version__, "librosa": librosa.__version__, "checkpoint_sha256": digest.hexdigest()}
    reply.write(json.dumps({"ready": True, "dim": dim, "identity": identity}) + "\n")
    reply.flush()
    for line in sys.stdin:
        results = []
        for path in json.loads(line)["files"]:
            try:
                results.append({"vector": vector(path)})
            except Exception as e:  # one bad file is reported, the others are still embedded
                results.append({"error": f"{type(e).__name__}: {e}"})
        reply.write(json.dumps({"results": results}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
