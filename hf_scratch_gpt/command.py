"""What the `hf-scratch-gpt` command needs of each of its commands (the module that owns a command exports one
`Command`; `cli.COMMANDS` only names it, so that a command's flags and behaviour live beside its code), and the
package's version."""

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """This package's version, as installed; a source checkout on the path (no metadata) says so instead."""
    try:
        return version("hf-scratch-gpt")
    except PackageNotFoundError:
        return "source checkout (not installed)"


@dataclass(frozen=True)
class Command:
    """`run` is called with the parsed flag dataclasses (in the order of `flags`), then the positional arguments."""

    run: Callable[..., None]
    flags: tuple[type, ...] = ()
    positionals: tuple[tuple[str, str], ...] = ()  # (name, help)
    flag_file: bool = False  # the flags may also come from a YAML or JSON file (the training commands)
