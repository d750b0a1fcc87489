"""User-facing errors: one clear line, a non-zero exit, nothing overwritten."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the command line, the data or the environment that the user can fix."""


def _one_line(message: str) -> str:
    # Errors raised inside DataLoader workers come back wrapped with the worker's traceback;
    # the last line holds the original "UserError: ..." text.
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        last = lines[-1]
        return last.split("UserError: ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; a UserError (also one raised in a data worker) exits 2 with one line."""
    logger = logging.getLogger("deepcluster")
    if not logger.handlers:  # errors raised before the script set up its logging still get printed
        logger.addHandler(logging.StreamHandler(sys.stderr))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        main()
    except UserError as err:
        logger.error("error: %s", _one_line(str(err)))
        sys.exit(EXIT_USER_ERROR)
    except RuntimeError as err:  # a UserError re-raised by a DataLoader worker arrives as its type
        if "UserError" in str(err):
            logger.error("error: %s", _one_line(str(err)))
            sys.exit(EXIT_USER_ERROR)
        raise


def script_entry(
    title: str,
    get_args_parser: Callable[[], argparse.ArgumentParser],
    main: Callable[[argparse.Namespace], object],
    epilog: str,
) -> None:
    """The `if __name__ == "__main__"` of every entry script: its parser (with --help and the departures from the
    paper or protocol as epilog), then main() under run_main."""
    parser = argparse.ArgumentParser(
        title, parents=[get_args_parser()], epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    run_main(lambda: main(parser.parse_args()))
