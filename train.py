"""Train a teacher and distil a student: ``python train.py --config NAME [key=value ...]``.

NAME is a recipe in ``configs/`` (default ``quickstart``) or a path to a YAML file; each
``key=value`` is an omegaconf dot-list override, e.g. ``loss.map_weight=0 data.batch_size=64``.
``--resume RUN_DIR`` continues an interrupted run from its last checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.config import ConfigError, list_configs, load_config
from distill.errors import UserError, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Explanation-matching knowledge distillation (teacher -> student).",
        epilog=f"recipes: {', '.join(list_configs())}",
    )
    parser.add_argument("--config", default="quickstart", help="recipe name or YAML path")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser.parse_intermixed_args(argv)  # options may follow the key=value overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.resume:
            config_path = Path(args.resume) / "config.yaml"
            if not config_path.is_file():
                raise ConfigError(
                    f"--resume {args.resume}: no config.yaml there; is it a run directory?"
                )
            cfg = load_config(str(config_path), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
    except UserError as error:
        return report(error)
    # Heavy imports only once the config is valid.
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from distill.tools.train import train
    from distill.training.interrupt import RunInterrupted

    try:
        train(cfg, resume_dir=args.resume)
    except UserError as error:  # bad weights or data, NaN loss, a config found wrong late
        return report(error)
    except RunInterrupted as stopped:  # at a safe point; the message says how to continue
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    except SIGTERMException:  # Lightning's own (outside the run's stages)
        return 128 + 15
    return 0


if __name__ == "__main__":
    sys.exit(main())
