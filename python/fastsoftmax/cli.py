"""The ``fastsoftmax`` command: ``demo``, ``train``, ``recommend`` and ``evaluate``.

Errors in paths, options or data end the command with one line on stderr and exit status 2
(never a traceback); interrupted runs exit with 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Formatter(argparse.HelpFormatter):
    """Shows each option's default unless it is None / False or the help already gives it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == argparse.SUPPRESS
        if not hidden and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # one line, no usage dump
        raise CliError(f"{message} (see '{self.prog} --help')")


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option flag of the parser and its subcommands."""
    flags: set[str] = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _option_strings(sub)
    return flags


def _as_flag(message: str, flags: set[str]) -> str:
    """An error about a Python argument ("history_dropout: ...") names the flag instead."""
    name, sep, rest = message.partition(":")
    flag = "--" + name.replace("_", "-")
    return f"{flag}:{rest}" if sep and flag in flags else message


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _show_model_defaults(wals: argparse._ArgumentGroup, dnn: argparse._ArgumentGroup) -> None:
    """Help texts of the model flags end with the default the model will use (their argparse
    default is None: "not given")."""
    import inspect

    from ._cli_models import WALS_DEFAULTS
    from .softmax import SoftmaxModel

    signature = inspect.signature(SoftmaxModel).parameters
    for group, defaults in ((wals, WALS_DEFAULTS), (dnn, None)):
        for action in group._group_actions:
            name = action.dest
            if defaults is None and name in signature:
                default = signature[name].default
            elif defaults is not None and name in defaults:
                default = defaults[name]
            else:
                continue
            if default is None:
                continue
            shown = ",".join(map(str, default)) or "''" if isinstance(default, tuple) else default
            action.help = f"{action.help or ''} (default: {shown})".lstrip()


def _layer_sizes(text: str) -> tuple[int, ...]:
    parts = [t for t in text.replace(" ", "").split(",") if t]
    return tuple(_positive_int(t) for t in parts)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PATH",
                   help="a MovieLens folder (ml-100k or ml-latest layout), a CSV file, or a "
                   "Parquet file (.parquet / .pq, or a folder so named holding Parquet files; "
                   "needs pyarrow)")  # fmt: skip
    p.add_argument("--user-col", default="userId",
                   help="CSV / Parquet: user column (default userId)")  # fmt: skip
    p.add_argument("--item-col", default="movieId",
                   help="CSV / Parquet: item column (default movieId)")  # fmt: skip
    p.add_argument("--weight-col", default=None,
                   help="CSV / Parquet: weight column (default: all 1)")  # fmt: skip
    p.add_argument("--min-rating", type=float, default=None,
                   help="binarise: keep interactions with rating >= this")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastsoftmax`` command."""
    parser = _Parser(prog="fastsoftmax",
                     description="Fast CPU training of softmax retrieval models and WALS.")  # fmt: skip
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    demo = sub.add_parser("demo", help="measure MF vs softmax DNN on a synthetic corpus",
                          description="Train WALS (w0 = 0 and tuned), the softmax DNN (positives "
                          "only, uniform negatives, hard negatives, full softmax) and a popularity "
                          "baseline on one synthetic corpus with known categories; print and save "
                          "the comparison table, results.json and the folding picture.")  # fmt: skip
    demo.add_argument("--quick", action="store_true", help="a small corpus (under 30 s)")
    demo.add_argument("--scale", type=_positive_float, default=1.0,
                      help="multiply the corpus size (default 1)")  # fmt: skip
    demo.add_argument("--out", default="fastsoftmax-demo", help="output folder")
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    demo.add_argument("--threads", type=_non_negative_int, default=0, help="0 = all cores")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    train = sub.add_parser("train", help="train a model on MovieLens, a CSV or a Parquet file",
                           description="Train WALS or the softmax DNN on real interactions and "
                           "save it; evaluates on a held-out split unless --no-eval.")  # fmt: skip
    _add_data_args(train)
    train.add_argument("--model", choices=("wals", "softmax"), default="wals", help="which model")
    train.add_argument("--out", default="model.npz", help="model file (.npz)")
    train.add_argument("--dim", type=_positive_int, default=None,
                       help="embedding dimension (default: WALS 128, softmax the model's)")  # fmt: skip
    wals = train.add_argument_group("WALS (--model wals)")
    wals.add_argument("--iterations", type=_positive_int, default=None, help="sweeps")
    wals.add_argument("--unobserved-weight", type=_non_negative_float, default=None,
                      help="w0, the weight of every unobserved entry")  # fmt: skip
    wals.add_argument("--regularization", type=_non_negative_float, default=None,
                      help="L2 penalty lambda")  # fmt: skip
    dnn = train.add_argument_group("softmax DNN (--model softmax; defaults: fs.SoftmaxModel's)")
    dnn.add_argument("--epochs", type=_positive_int, default=None)
    dnn.add_argument("--hidden", type=_layer_sizes, default=None,
                     help="ReLU layer sizes, comma-separated ('' for none)")  # fmt: skip
    dnn.add_argument("--embedding-dim", type=_positive_int, default=None,
                     help="width of the history bag's item embeddings")  # fmt: skip
    dnn.add_argument("--history-dropout", type=_non_negative_float, default=None,
                     help="probability of dropping a history item at a training step, [0, 1)")  # fmt: skip
    dnn.add_argument("--history-target", choices=("all", "dropped"), default=None,
                     help="targets: all the user's items, or only the dropped ones")  # fmt: skip
    dnn.add_argument("--row-weighting", choices=("targets", "uniform"), default=None,
                     help="a user counts by their number of items (targets) or once (uniform)")  # fmt: skip
    dnn.add_argument("--loss", choices=("full", "sampled", "positives"), default=None)
    dnn.add_argument("--sampler", choices=("uniform", "popularity", "in_batch", "score"),
                     default=None, help="negatives of --loss sampled")  # fmt: skip
    dnn.add_argument("--num-negatives", type=_positive_int, default=None,
                     help="negatives per batch (default: 256; with --sampler in_batch: a cap, "
                     "default none)")  # fmt: skip
    dnn.add_argument("--item-embedding", choices=("table", "qr", "hybrid"), default=None,
                     help="how the item table is stored: whole, quotient-remainder factors, or "
                     "factors plus rows for the most frequent items")  # fmt: skip
    dnn.add_argument(
        "--item-buckets",
        type=_positive_int,
        default=None,
        help="qr / hybrid: rows of the remainder table (default sqrt(n_items))",
    )
    dnn.add_argument(
        "--item-dedicated",
        type=_non_negative_int,
        default=None,
        help="hybrid: items with their own rows (default n_items / 10)",
    )
    dnn.add_argument("--history-buckets", type=_positive_int, default=None,
                     help="hash the history's item ids into this many rows (default: one row per "
                     "item; hashing bounds the input table for very large catalogues)")  # fmt: skip
    dnn.add_argument("--batch-size", type=_positive_int, default=None)
    dnn.add_argument("--learning-rate", type=_positive_float, default=None)
    dnn.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE",
                     help="choose the epochs by validation recall@10 on 10%% of each user's "
                     "training items, then refit on all of them")  # fmt: skip
    _show_model_defaults(wals, dnn)
    train.add_argument("--tune", action="store_true",
                       help="grid-search the main hyperparameters on a validation split carved "
                       "from the training part, then refit")  # fmt: skip
    train.add_argument("--test-fraction", type=float, default=0.2,
                       help="share of each user's items held out for the evaluation")  # fmt: skip
    train.add_argument("--no-eval", action="store_true", help="train on everything, no evaluation")
    train.add_argument("--seed", type=_non_negative_int, default=0, help="seed of everything")
    train.add_argument("--threads", type=_non_negative_int, default=0, help="0 = all cores")
    train.add_argument("--no-progress", action="store_true")

    rec = sub.add_parser("recommend", help="top-k items for users of a trained model",
                         description="Recommend items for users (original ids in and out); "
                         "each user's training items are excluded. --user prints them; --all "
                         "writes every training user's top-k to a Parquet file (--out; needs "
                         "pyarrow: pip install 'fastsoftmax[data]').")  # fmt: skip
    rec.add_argument("--model", required=True, help="model file written by 'fastsoftmax train'")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append",
                     help="original user id (repeat for several users)")  # fmt: skip
    who.add_argument("--all", action="store_true",
                     help="every training user, written to --out")  # fmt: skip
    rec.add_argument("-k", "--k", type=_positive_int, default=10, help="items per user")
    rec.add_argument("--format", choices=("table", "json", "csv"), default="table",
                     help="--user: aligned columns, a JSON list of records, or CSV with a "
                     "header")  # fmt: skip
    rec.add_argument("--index", choices=("exact", "ivf"), default="exact",
                     help="--all: exact search, or approximate search with an IVF index "
                     "(fs.build_index; faster for large catalogues)")  # fmt: skip
    rec.add_argument("--out", default=None, metavar="FILE",
                     help="--all: the Parquet file to write (columns query, rank, item, score; "
                     "an existing file is replaced)")  # fmt: skip

    ev = sub.add_parser("evaluate", help="evaluate a trained model on a data set",
                        description="Evaluate a trained model against the interactions in "
                        "--data (users and items matched by original id); the items the model "
                        "saw in training are excluded.")  # fmt: skip
    ev.add_argument("--model", required=True)
    _add_data_args(ev)
    ev.add_argument("-k", type=_positive_int, default=10)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__, _core

            print(f"{__version__} (kernels: {_core.kernel_level})")
            return 0
        if args.command is None:
            parser.print_help()
            return 2
        return _COMMANDS[args.command](args)
    except CliError as e:
        print(f"fastsoftmax: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, IndexError, KeyError, OSError, FloatingPointError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"missing {e}"
        msg = _as_flag(msg.splitlines()[0], _option_strings(parser)) if msg else type(e).__name__
        print(f"fastsoftmax: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastsoftmax: interrupted", file=sys.stderr)
        return 130


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.preset(quick=args.quick, scale=args.scale, seed=args.seed,
                            num_threads=args.threads, show_progress=not args.no_progress)  # fmt: skip
    run_demo(Path(args.out), cfg)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import _cli_models

    return _cli_models.train(args)


def _cmd_recommend(args: argparse.Namespace) -> int:
    from . import _cli_models

    return _cli_models.recommend(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import _cli_models

    return _cli_models.evaluate(args)


_COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "recommend": _cmd_recommend,
    "evaluate": _cmd_evaluate,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
