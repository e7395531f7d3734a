"""The `python -m usam ...` command line: one subcommand per module."""
from __future__ import annotations

import argparse
import importlib
import sys

from usam.errors import UsamError

# subcommand -> module defining add_arguments(parser) and run(args) -> int
COMMANDS = {
    "info": ("usam.info", "parameter and FLOP counts of a configuration"),
    "phantom": ("usam.phantom", "write a synthetic pelvic CT cohort with ground truth"),
    "train": ("usam.train", "train U-SAM"),
    "evaluate": ("usam.evaluate", "evaluate a checkpoint on a cohort"),
    "bench": ("usam.bench", "speed benchmarks"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it; user errors print a message and exit 2."""
    parser = argparse.ArgumentParser(prog="python -m usam", description="U-SAM Studio tools")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # import only the module that runs: keeps `--help` and start-up fast
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except UsamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
