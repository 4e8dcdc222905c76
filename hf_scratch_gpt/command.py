"""What the `hf-scratch-gpt` command needs of each of its commands. The module that owns a command exports one
`Command`; `cli.COMMANDS` only names it, so that a command's flags and behaviour live beside its code."""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """`run` is called with the parsed flag dataclasses (in the order of `flags`), then the positional arguments."""

    run: Callable[..., None]
    flags: tuple[type, ...] = ()
    positionals: tuple[tuple[str, str], ...] = ()  # (name, help)
    flag_file: bool = False  # the flags may also come from a YAML or JSON file (the training commands)
