"""The files that record a run beside its model: its arguments as JSON, and `run.yaml`, the flags that differ from
their defaults, which the command reads back to run it again."""

import dataclasses
import json
from pathlib import Path

import yaml
from transformers import TrainingArguments

from ..command import package_version


class FlagFileError(ValueError):
    """A file of flags that cannot be read as one."""


def write_training_args(folder: Path, training_args) -> None:
    """The run's arguments as JSON (Trainer's own copy is a pickle), with the number of processes it ran on."""
    arguments = {**training_args.to_dict(), "world_size": training_args.world_size}
    (folder / "training_args.json").write_text(json.dumps(arguments, indent=2) + "\n")


RUN_CONFIG = "run.yaml"
_NOT_REPRODUCED = {"resume_from_checkpoint", "hub_token", "push_to_hub_token"}  # how it ran, or secret


def write_run_config(path: Path, command: str, *arguments) -> None:
    """The flags that differ from their defaults, as a YAML file the command reads back
    (`hf-scratch-gpt pretrain run.yaml` reruns the run)."""
    flags = {}
    for args in arguments:
        flags.update(_changed_flags(args))
    header = (f"# The flags of this run that differ from their defaults (hf-scratch-gpt {package_version()}).\n"
              f"# Run it again with: hf-scratch-gpt {command} {path.name} --output_dir NEW_FOLDER\n")
    path.write_text(header + yaml.safe_dump(flags, sort_keys=False))


def _changed_flags(args) -> dict:
    """The fields of an argument dataclass that differ from their defaults, as plain YAML values."""
    values = args.to_dict() if isinstance(args, TrainingArguments) else dataclasses.asdict(args)
    if isinstance(args, TrainingArguments):
        defaults = type(args)().to_dict()
    else:
        defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(args)}
    flags = {f.name for f in dataclasses.fields(args) if f.init} - _NOT_REPRODUCED
    return {name: _plain(value) for name, value in values.items()
            if name in flags and _plain(value) != _plain(defaults[name])}


def _plain(value):
    """Enums as their values, tuples as lists: what YAML writes and the command line reads back."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)


def flags_from_file(path: Path) -> list[str]:
    """A file's mapping of flag names to values, as command-line flags (lists as several values, `null` left out:
    the flag keeps its default)."""
    if not path.is_file():
        raise FlagFileError(f"Config file {path} does not exist; give a YAML or JSON file of flags.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FlagFileError(f"Config file {path} is not valid YAML or JSON: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise FlagFileError(f"Config file {path} holds a {type(values).__name__}, not a mapping of flag names to "
                          "values (for example `max_steps: 100`).")
    flags = []
    for key, value in values.items():
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool)
                                else str(v) for v in items)]
    return flags
