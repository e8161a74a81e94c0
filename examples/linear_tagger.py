"""Train a linear tagger (logistic regression, scikit-learn) on frozen embeddings.

    python examples/linear_tagger.py dataset/            # dataset/<label>/*.wav: one folder per label
    python examples/linear_tagger.py dataset/ --predict new_song.mp3

This is the linear-probe protocol of the PEMR and MART papers in miniature: the encoder is
frozen, only a linear classifier is fitted on its clip embeddings (standardised). Prints the
held-out accuracy and, with --predict, each label's probability for new files.
Needs scikit-learn (`pip install scikit-learn`, or the project's [dev] extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import musicembed
from musicembed.audio import find_audio_files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=Path, help="folder with one sub-folder of audio files per label")
    p.add_argument("--model", default=os.environ.get("MUSICEMBED_MODEL", "pemr"),
                   help="manifest name, model folder or hf-hub:<owner>/<repo> (default: $MUSICEMBED_MODEL or pemr)")
    p.add_argument("--test-size", type=float, default=0.3, help="held-out fraction (default: 0.3)")
    p.add_argument("--predict", nargs="*", type=Path, default=[], help="files to tag with the trained model")
    args = p.parse_args(argv)

    labels = sorted(d.name for d in args.dataset.iterdir() if d.is_dir())
    paths, y = [], []
    for k, label in enumerate(labels):
        files, _ = find_audio_files([args.dataset / label], recursive=True)
        paths += files
        y += [k] * len(files)
    if len(labels) < 2:
        p.error(f"{args.dataset} needs at least two label folders (found {labels})")
    y = np.array(y)

    model = musicembed.load_model(args.model)
    X = model.embed(paths)  # (N, D) clip embeddings
    print(f"embedded {len(paths)} files ({X.shape[1]}-d) in {len(labels)} classes: {', '.join(labels)}")

    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=args.test_size, stratify=y, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(X_tr, y_tr)
    acc = accuracy_score(y_te, clf.predict(X_te))
    print(f"held-out accuracy: {acc:.3f} on {len(y_te)} files (chance: {np.bincount(y).max() / len(y):.3f})")

    if args.predict:
        probs = clf.predict_proba(model.embed(args.predict))
        for path, row in zip(args.predict, probs):
            ranked = sorted(zip(labels, row), key=lambda t: -t[1])
            print(f"{path}: " + ", ".join(f"{label} {prob:.2f}" for label, prob in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
