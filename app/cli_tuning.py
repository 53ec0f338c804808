"""The fine-tuning options of the command line (``annotate`` and ``annotators train`` with --head fine-tune)."""

from __future__ import annotations

import argparse


def add_tuning_arguments(p: argparse.ArgumentParser) -> None:
    """The fine-tuning options (with --head fine-tune); unset ones take the platform's defaults."""
    p.add_argument("--epochs", type=int, help="fine-tuning: the most epochs (default 10; stops early on a stall)")
    p.add_argument("--learning-rate", type=float, help="fine-tuning: AdamW's learning rate (default 5e-5)")
    p.add_argument("--frozen-layers", type=int, help="fine-tuning: first encoder layers kept as they are (default 2)")
    p.add_argument("--patience", type=int, help="fine-tuning: epochs without a better validation macro-F1 before "
                                                "stopping (default 2)")


def tuning_options(args: argparse.Namespace) -> dict[str, object]:
    given = {"epochs": args.epochs, "learning_rate": args.learning_rate, "frozen_layers": args.frozen_layers,
             "patience": args.patience}
    return {k: v for k, v in given.items() if v is not None}
