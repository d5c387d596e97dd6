"""`fer` (and `python -m fer_common`): every script of the toolkit as a subcommand.

    fer analyse photo.jpg            # python inference.py photo.jpg
    fer video --video clip.mp4       # python real_time_video.py --video clip.mp4
    fer NAME --help                  # the flags of one command
"""

import importlib
import sys

from fer_common.commands import ALIASES, COMMANDS
from fer_common.version import __version__


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: fer COMMAND [options]     (fer COMMAND --help for its options; fer-toolkit {__version__})",
             "", "commands:"]
    for name, (_, script, what) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {what}" + (f" ({script})" if script else ""))
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(f"fer-toolkit {__version__}")
        sys.exit(0)
    name = ALIASES.get(argv[0], argv[0])
    if name not in COMMANDS:
        print(f"fer: error: unknown command '{argv[0]}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        sys.exit(2)
    from fer_common.cli import one_line_errors, run_main, say_as

    with one_line_errors(f"fer {name}"):       # a command module that cannot load is one line too
        module = importlib.import_module(f"fer_common.{COMMANDS[name][0]}")
        parser = module.get_args_parser()
    parser.prog = f"fer {name}"
    # A pip user has `fer NAME`, not the checkout's scripts: help and errors name what they have.
    names = {script: f"fer {command}" for command, (_, script, _) in COMMANDS.items() if script}
    parser.description = say_as(parser.description, names)
    for action in parser._actions:
        action.help = say_as(action.help, names)
    run_main(module.main, parser, argv[1:], names)


if __name__ == "__main__":
    main()
