"""fer_common.cli: every command's --help shows each flag's default once, in words a user reads."""

import re

import pytest

from fer_common import cli
from fer_common.commands import COMMANDS
from synthetic import REPO


def help_of(name: str) -> str:
    import importlib

    module = importlib.import_module(f"fer_common.{COMMANDS[name][0]}")
    return " ".join(module.get_args_parser().format_help().split())       # unwrapped


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_flag_shows_its_default_once(name):
    text = help_of(name)
    for entry in re.split(r" (?=--?\w)", text):
        assert entry.count("(default") <= 1, entry
    assert "(default: True)" not in text and "(default: False)" not in text, "a switch says on or off"


def test_paired_switches_say_what_they_turn_off():
    text = help_of("video")
    assert re.search(r"--tta test-time augmentation: .*?\(default: off\)", text)
    assert re.search(r"--no_tta classify each face once \(no mirror image\) \(turns off --tta\)", text)
    assert re.search(r"--threaded detect faces .*?\(default: on\)", text)
    assert "(turns off --threaded)" in text
    assert "--video PATH video file to process (default: the webcam) --camera" in text


def test_a_required_flag_shows_no_default():
    text = help_of("average")
    assert "--output OUTPUT the averaged checkpoint --overwrite" in text
    assert "(default: equal) --output" in text


def test_set_defaults_is_the_switch_default():
    parser = cli.make_parser("doc")
    parser.add_argument("--fast", action="store_true", help="go fast")
    parser.add_argument("--no_fast", dest="fast", action="store_false", help="go slowly")
    parser.set_defaults(fast=True)
    text = " ".join(parser.format_help().split())
    assert "go fast (default: on)" in text and "go slowly (turns off --fast)" in text


def test_install_hints_name_the_extra():
    """A missing optional library is named the one way a user installs it: the extra, never the bare package."""
    import ast

    for path in (REPO / "fer_common").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for hint in re.findall(r"pip install (\S+)", node.value):
                    assert hint.startswith(("'fer-toolkit[", ".", "'.[", "-")), f"{path.name}: pip install {hint}"
