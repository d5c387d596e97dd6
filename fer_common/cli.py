"""What every script shares on the command line: help format, flag groups, one-line errors."""

import argparse
import sys


class FERError(Exception):
    """A problem with the user's input or environment, told in one line (no traceback)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, and keeps the docstring's line breaks (it holds the README command)."""


def make_parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is the script's docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter, **kwargs)


def add_device_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Device")
    group.add_argument("--device", default="auto",
                       help="auto | cpu | cuda | cuda:N | mps (auto picks CUDA, then MPS, then the CPU)")
    return group


def run_main(main, parser: argparse.ArgumentParser, argv=None) -> None:
    """Parse arguments, call main(args), and turn FERError / Ctrl-C into one line and an exit code."""
    args = parser.parse_args(argv)
    try:
        code = main(args)
    except FERError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as command-line tools do.
        sys.stderr.close()
        sys.exit(141)
    sys.exit(code or 0)
