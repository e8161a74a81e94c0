"""``musicembed train``: pre-train PEMR or MART, resume a run, export its encoder.

The click group is ``train_command``; the main CLI mounts it lazily as ``musicembed train``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

# Options that only steer how a run proceeds; --resume accepts new values for them.
SCHEDULE_OPTIONS = ("epochs", "steps", "lr_decay_from", "workers", "augment_in", "checkpoint_every",
                    "keep_checkpoints", "device", "progress")


def _common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--data", help="Audio folder (searched recursively), text list of paths, or CSV manifest "
                                    "with a 'path' column; manifest rows sharing a 'track_id' are versions of one "
                                    "piece, and a positive pair then takes its two views from two of them."),
        click.option("--split", default=None, help="Use only the manifest rows whose 'split' column has this value."),
        click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder."),
        click.option("--epochs", default=300, show_default=True, type=click.IntRange(min=1)),
        click.option("--steps", default=None, type=click.IntRange(min=1), help="Stop after this many steps in all."),
        click.option("--batch-size", default=48, show_default=True, type=click.IntRange(min=2),
                     help="Per process; the global batch is this times the number of processes."),
        click.option("--lr", default=3e-4, show_default=True, type=float, help="Adam learning rate."),
        click.option("--lr-decay-from", "lr_decay_from", default=None, type=click.IntRange(min=0), metavar="STEP",
                     help="From this optimizer step on, the learning rate falls along a half cosine to 0 at "
                          "--steps (needs --steps); also on --resume, to anneal a run that ran at a constant rate."),
        click.option("--weight-decay", default=1e-6, show_default=True, type=float),
        click.option("--crop-seconds", default=None, type=click.FloatRange(min=0, min_open=True),
                     help="Training window in seconds (sets the model's window_samples)."),
        click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
                     help="DataLoader worker processes (and audio decoding processes)."),
        click.option("--augment-in", "augment_in", default="device", show_default=True,
                     type=click.Choice(["device", "workers"]),
                     help="Where batches are augmented: in the training process on its device, or in the "
                          "DataLoader workers (CPU, overlapping the model step; needs --workers >= 1)."),
        click.option("--align-versions/--independent-versions", "align_versions", default=False,
                     help="Two views from different versions of a piece: centred on one random point of the "
                          "score (needs the manifest's 'tempo' column, the speed each version plays its score "
                          "at), or each from its own random point [default: independent]."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--checkpoint-every", default=500, show_default=True, type=click.IntRange(min=1),
                     help="Steps between checkpoints (one is also written at the end and on SIGINT/SIGTERM)."),
        click.option("--keep-checkpoints", default=3, show_default=True, type=click.IntRange(min=1)),
        click.option("--config", "configs", multiple=True,
                     help="Preset (default, tiny), JSON file or inline JSON of model config overrides, with "
                          "optional 'objective' and 'augment' sections; repeatable, applied in order."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:N."),
        click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                     help="Decoded-audio cache [default: ~/.cache/musicembed/train-audio]."),
        click.option("--init-from", "init_from", default=None, metavar="MODEL",
                     help="Start from an exported model's weights (manifest name, folder or hf-hub:...): its "
                          "config.json replaces the preset, --config applies on top; heads start afresh."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint."),
        click.option("--progress/--no-progress", default=True, help="Show the progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _given(**values: Any) -> dict[str, Any]:
    """The objective options typed on the command line (others come from --config or the defaults)."""
    ctx = click.get_current_context()
    return {k: v for k, v in values.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}


def _run(method: str, params: dict[str, Any], objective: dict[str, Any]) -> None:
    from ..errors import WeightsError
    from . import distributed
    from .config import TrainConfig, init_weights, resolve
    from .loop import train

    ctx = click.get_current_context()
    if params["resume"]:
        cfg = TrainConfig.load(params["out"])
        cfg.out = params["out"]  # the folder given, also when the run was moved or copied
        if cfg.method != method:
            raise click.UsageError(f"{params['out']} is a {cfg.method} run, not {method}")
        given = [p.name for p in ctx.command.params
                 if p.name and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
        for name in given:
            if name in SCHEDULE_OPTIONS:
                setattr(cfg, name, params[name])
        ignored = sorted(set(given) - set(SCHEDULE_OPTIONS) - {"out", "resume"})
        if ignored:
            click.echo(f"--resume: keeping the run's own {', '.join(ignored)} (from run.json)", err=True)
    else:
        if not params["data"]:
            raise click.UsageError("--data is required (unless --resume)")
        base, init = None, None
        if params["init_from"]:
            try:
                base, _, init = init_weights(params["init_from"])
            except WeightsError as e:
                raise click.UsageError(f"--init-from: {e}") from None
            if base["method"] != method:
                raise click.UsageError(f"--init-from {params['init_from']} is a {base['method']} model, not {method}")
        try:
            model, obj, augment = resolve(method, list(params["configs"]), params["crop_seconds"], base)
        except (ValueError, TypeError) as e:
            raise click.UsageError(str(e)) from None
        obj.update(objective)
        cfg = TrainConfig(
            method=method, data=params["data"], split=params["split"], out=params["out"], model=model,
            objective=obj, augment=augment, epochs=params["epochs"], steps=params["steps"],
            batch_size=params["batch_size"], lr=params["lr"], weight_decay=params["weight_decay"],
            lr_decay_from=params["lr_decay_from"],
            workers=params["workers"], augment_in=params["augment_in"], align_versions=params["align_versions"],
            seed=params["seed"],
            checkpoint_every=params["checkpoint_every"],
            keep_checkpoints=params["keep_checkpoints"], device=params["device"], cache_dir=params["cache_dir"],
            progress=params["progress"], init_from=init,
        )
    try:
        result = train(cfg, resume=params["resume"])
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, WeightsError) as e:
        raise click.ClickException(str(e)) from None
    main = distributed.from_env().main
    if result.signal is not None:
        if main:
            click.echo(f"stopped by signal {result.signal} at step {result.step}; checkpoint {result.checkpoint}. "
                       "Continue with the same command plus --resume.", err=True)
        sys.exit(128 + result.signal)
    if main:
        click.echo(f"done: {result.step} steps, checkpoint {result.checkpoint}", err=True)


@click.group(name="train")
def train_command() -> None:
    """Pre-train PEMR or MART encoders on your audio and export them for load_model."""


@train_command.command("pemr")
@_common_options
@click.option("--mask", type=click.Choice(["none", "pos", "posneg"]), default="posneg", show_default=True,
              help="none: plain Barlow Twins; pos: positive mask; posneg: positive + negative (PEMR).")
@click.option("--ratio", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Fraction r of lowest-scoring frames the masks act on.")
@click.option("--pred-weight", default=0.01, show_default=True, type=float,
              help="Weight of the frame-prediction loss (authors' code: 0.01).")
@click.option("--bt-lambda", default=5e-3, show_default=True, type=float,
              help="Barlow Twins off-diagonal and negative-diagonal weight.")
def pemr_command(mask: str, ratio: float, pred_weight: float, bt_lambda: float, **params: Any) -> None:
    """Pre-train PEMR (positive-negative frame masks, Barlow Twins).

    \b
    Examples:
      musicembed train pemr --data music/ --out runs/pemr
      musicembed train pemr --data manifest.csv --split train --out runs/pemr --steps 2000
      musicembed train pemr --data music/ --out runs/pemr --resume
      musicembed train pemr --data music/ --out runs/bt --mask none
      musicembed train pemr --data music/ --out runs/pemr-ft --init-from pemr --mask none
    """
    _run("pemr", params, _given(mask=mask, ratio=ratio, pred_weight=pred_weight, bt_lambda=bt_lambda))


@train_command.command("mart")
@_common_options
@click.option("--pwt/--no-pwt", default=True, show_default=True, help="Part-whole transformer ('w/o PWT': --no-pwt).")
@click.option("--hcl/--no-hcl", default=True, show_default=True,
              help="Hierarchical part-whole loss term ('w/o HCL': --no-hcl).")
@click.option("--tau", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Contrastive temperature.")
@click.option("--pw-weight", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Scale of the part-whole term's lambdas (1 = the paper).")
@click.option("--positives", default="joint", show_default=True, type=click.Choice(["joint", "separate"]),
              help="joint: the paper's one log over all positives; separate: one log term per positive.")
def mart_command(pwt: bool, hcl: bool, tau: float, pw_weight: float, positives: str, **params: Any) -> None:
    """Pre-train MART (hierarchical crops, part-whole transformer, hierarchical contrastive loss).

    \b
    Examples:
      musicembed train mart --data music/ --out runs/mart --crop-seconds 4.096
      musicembed train mart --data music/ --out runs/mart-nopwt --no-pwt
      musicembed train mart --data music/ --out runs/mart-nohcl --no-hcl
      musicembed train mart --data music/ --out runs/mart-pw --pw-weight 0.01
      musicembed train mart --data music/ --out runs/mart-sep --positives separate
    """
    if not pwt:
        params["configs"] = (*params["configs"], '{"mart": {"use_pwt": false}}')
    objective = _given(tau=tau, pw_weight=pw_weight, positives=positives)
    if not hcl:
        objective["hierarchical"] = False
    _run("mart", params, objective)


@train_command.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--checkpoint", default=None, type=click.Path(exists=True, file_okay=False),
              help="A checkpoint folder of the run [default: the newest].")
def export_command(run_dir: str, out: str, checkpoint: str | None) -> None:
    """Write a run's encoder as config.json + model.safetensors (load with musicembed.load_model(OUT)).

    \b
    Examples:
      musicembed train export runs/pemr --out models/pemr
      musicembed embed song.mp3 --model models/pemr
    """
    from .loop import export

    try:
        path = export(run_dir, out, checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(path))
