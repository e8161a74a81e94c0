"""Plot a training run's log.csv (loss per step) to a PNG.

    python scripts/plot_training_log.py RUN_DIR/log.csv OUT.png --title "PEMR (free music)"
"""

from __future__ import annotations

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log_csv")
    ap.add_argument("out_png")
    ap.add_argument("--title", default="training loss")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.log_csv)))
    steps = [int(r["step"]) for r in rows]
    parts = [k for k in rows[0] if k not in ("step", "epoch", "lr", "seconds")]
    fig, axes = plt.subplots(1, len(parts), figsize=(4 * len(parts), 3.2), squeeze=False)
    for ax, key in zip(axes[0], parts):
        ax.plot(steps, [float(r[key]) for r in rows], marker=".")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{args.title}: {len(rows)} steps, {float(rows[-1]['seconds']) / 60:.0f} min")
    fig.tight_layout()
    fig.savefig(args.out_png, dpi=100)


if __name__ == "__main__":
    main()
