"""What every stage entry point shares: argument parsing, logging, clean errors."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable

from sdlab.config import Params, load_params
from sdlab.errors import EXPECTED_ERRORS  # one line each; anything else keeps its traceback


def parse_args(description: str, *paths: str) -> argparse.Namespace:
    """`--params` plus one required `--<name>` per path the stage reads or writes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    for name in paths:
        parser.add_argument(f"--{name}", required=True)
    return parser.parse_args()


def stage(name: str) -> Callable[[Callable[[argparse.Namespace, Params], None]], Callable[[], None]]:
    """Wrap a stage body `(args, params)`: validate params first, exit non-zero with a
    one-line message (no traceback) on an expected error."""

    def decorate(body: Callable[[argparse.Namespace, Params], None]) -> Callable[[], None]:
        @functools.wraps(body)
        def main(args: argparse.Namespace) -> None:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
            logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
            started = time.perf_counter()
            try:
                params = load_params(args.params)
                body(args, params)
            except EXPECTED_ERRORS as exc:
                print(f"{name}: error: {exc}", file=sys.stderr)
                sys.exit(1)
            logging.getLogger(name).info("done in %.1f s", time.perf_counter() - started)

        return main

    return decorate
