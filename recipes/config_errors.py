"""One actionable line from jsonargparse's multi-line parse errors (malformed YAML, unknown key, wrong type)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recipes.cli import recipe_path

_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_KEY_NOT_EXPECTED = re.compile(r"does not accept option '([\w.]+)'")
_MISSING_FILE = re.compile(r"File does not exist: '([^']+)'")
_CLASS_PATH = re.compile(r"given class_path '([\w.]+)'")
_PARSER_KEY = re.compile(r'Parser key "([\w.]+)"')
_EXPECTED_GOT = re.compile(r"Expected a <class '(\w+)'>\. Got value: (.*)")
_GIVEN_VALUE = re.compile(r"Given value: (.*)")
_EXPECTED = re.compile(r"Expected a <class '(\w+)'>")
_YAML_POSITION = re.compile(r"line (\d+), column (\d+)")


def concise_config_error(message: str, config_files: list[str]) -> str:
    """``message`` (an ``argparse.ArgumentError`` text from jsonargparse) as one line saying what to fix."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else message
    if first.startswith("Problems parsing config"):
        culprit = ", ".join(config_files) or "the config"
        for name in config_files:  # find which file is broken: jsonargparse does not say
            try:
                yaml.safe_load(Path(recipe_path(name)).read_text("utf-8"))
            except yaml.YAMLError as err:
                culprit, message = name, str(err)
                break
            except OSError:
                continue
        positions = _YAML_POSITION.findall(message)
        where = f" near line {positions[-1][0]}, column {positions[-1][1]}" if positions else ""
        what = first.split(":", 1)[1].strip() if ":" in first else "invalid YAML"
        return f"malformed YAML in {culprit}{where}: {what}; fix the YAML syntax"
    section = _PARSER_KEY.search(message)
    section_name = section.group(1) if section else ""
    if match := _NOT_ACCEPTED.search(message):
        class_path = _CLASS_PATH.search(message)
        owner = class_path.group(1) if class_path else section_name
        return (f"unknown config key '{section_name}.init_args.{match.group(1)}' ({owner} has no such argument); "
                f"check the spelling, or list the arguments with `python -m recipes fit --{section_name}.help {owner}`")
    if match := _KEY_NOT_EXPECTED.search(message):
        return f"unknown config key '{match.group(1)}'; check the spelling, or list the keys with --help"
    if match := _MISSING_FILE.search(message):
        return (f"config file not found: {match.group(1)}; give a path or the name of a recipe in recipes/configs/ "
                "(e.g. news16_cpu.yaml)")
    nested_keys = _PARSER_KEY.findall(message)
    key = ".init_args.".join(nested_keys) if len(nested_keys) > 1 else section_name
    if match := _EXPECTED_GOT.search(message):
        return f"wrong type for '{key}': expected {match.group(1)}, got {match.group(2)!r}"
    if (expected := _EXPECTED.search(message)) and (given := _GIVEN_VALUE.search(message)):
        return f"wrong type for '{key}': expected {expected.group(1)}, got {given.group(1)!r}"
    return f"invalid configuration: {' '.join(lines)[:300]}"
