"""What the command-line entry points share: checkpoint arguments and user-facing error reporting."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Callable, Sequence

from ..errors import DynAvatarError
from ..progress import set_quiet

# What the machine refuses, not a bug: a full disk or quota, a file-size limit, a read-only or
# forbidden place. Raised where no more specific message catches it, these are one line too.
REFUSED_BY_THE_SYSTEM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def checkpoint_tag(text: str) -> str:
    """argparse type of --checkpoint: 'latest' or an epoch number."""
    if text == "latest":
        return text
    if text.isdigit():
        return str(int(text))
    raise argparse.ArgumentTypeError(f"expected 'latest' or an epoch number, got {text!r}")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=checkpoint_tag, default="latest",
                        help="checkpoint to load: latest or an epoch number")
    parser.add_argument("--load_path", default="", help="train folder of the experiment to load from "
                                                        "(default: the conf's experiment)")


def setup_logging(quiet: bool = False) -> None:
    """Info messages and progress bars, or with `quiet` warnings and errors only."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    set_quiet(quiet)


def main_with_errors(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a command; a problem with the user's input is one message on stderr and exit code 2."""
    try:
        sys.exit(run(argv))
    except DynAvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in REFUSED_BY_THE_SYSTEM:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (free disk space, or fix the permissions, and run again)",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: checkpoints already written are kept (resume training with --is_continue)",
              file=sys.stderr)
        sys.exit(130)
