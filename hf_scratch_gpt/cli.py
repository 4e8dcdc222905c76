"""The `hf-scratch-gpt` command: a table of commands, each the `Command` its own module exports.

Flags are dataclasses read by `HfArgumentParser` (each checks its own values as it is built); the training
commands also read them from a YAML or JSON file. Errors print one line and exit non-zero (`--debug` shows the
traceback).
"""

import sys
from importlib import import_module
from pathlib import Path

from transformers import HfArgumentParser

from .command import package_version

# name: (help, the module whose `Command` runs it: "module" or "module:attribute"; imported on use, so that
# `--help` stays quick)
COMMANDS = {
    "pretrain": ("Pretrain a model on a corpus with Trainer.", "recipes.pretraining"),
    "classify": ("Fine-tune a classifier (LoRA by default) with Trainer.", "recipes.classification"),
    "instruct": ("Fine-tune a model to follow instructions (LoRA by default).", "recipes.instruction"),
    "dpo": ("Tune an instruction model on preference pairs with DPO (LoRA by default).", "recipes.dpo"),
    "generate": ("Continue a prompt with a saved model.", "generation:generate"),
    "chat": ("Chat with an instruction model: one instruction per line on standard input, replies streamed.",
             "generation:chat"),
    "convert": ("Convert GPT-2 or the book's checkpoints <-> ScratchGPT (direction from the source, or --to).",
                "convert"),
    "export": ("Export a model for llama.cpp and Ollama (GGUF file and Modelfile), or as a plain GPT-2 folder.",
               "export"),
    "serve": ("Serve a causal LM with vLLM's OpenAI-compatible server (vLLM installed beside this package).",
              "recipes.serving"),
    "push": ("Upload a saved folder to the Hugging Face Hub in one commit (checkpoints stay behind).",
             "artifacts.hub"),
}
CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hf-scratch-gpt COMMAND [flags] [--debug]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (help_text, _) in COMMANDS.items()]
    lines += ["", "`hf-scratch-gpt COMMAND --help` lists a command's flags. The training commands (pretrain, classify,",
              "instruct, dpo) also read them from a YAML or JSON file: `hf-scratch-gpt pretrain run.yaml` or",
              "`--config run.yaml`; flags on the command line win. Every run writes its own as run.yaml."]
    return "\n".join(lines)


def load_command(name: str):
    """The `Command` of `name`, from the module that owns it."""
    module, _, attribute = COMMANDS[name][1].partition(":")
    return getattr(import_module(f"{__package__}.{module}"), attribute or "command")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] in (["--version"], ["-V"]):
        print(f"hf-scratch-gpt {package_version()}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    try:  # parsing too: every argument dataclass checks its values as it is built
        command = load_command(name)
        parser = HfArgumentParser(command.flags, prog=f"hf-scratch-gpt {name}", description=COMMANDS[name][0])
        parser.error = _usage_error  # one line, like every other error
        for arg_name, help_text in command.positionals:
            parser.add_argument(arg_name, help=help_text)
        if command.flag_file:
            rest = _flags_with_config_file(rest)
        try:
            outputs = parser.parse_args_into_dataclasses(rest)
        except ValueError as error:
            raise _UsageError(str(error)) from error
        parsed, extra = outputs[: len(command.flags)], outputs[len(command.flags) :]
        command.run(*parsed, *(getattr(extra[0], arg_name) for arg_name, _ in command.positionals))
    except Exception as error:  # the CLI's contract: one line, no traceback unless --debug
        if debug:
            raise
        from .loading import one_line

        print(f"hf-scratch-gpt {name}: error: {one_line(error)}", file=sys.stderr)
        return 2 if isinstance(error, _UsageError) else 1
    finally:
        _leave_process_group()
    return 0


def _flags_with_config_file(rest: list[str]) -> list[str]:
    """The flags of a YAML / JSON file (`COMMAND run.yaml` or `--config run.yaml`) put before those of the
    command line, so that these win."""
    from .artifacts import FlagFileError, flags_from_file

    if rest and not rest[0].startswith("-") and rest[0].endswith(CONFIG_FILE_SUFFIXES):
        path, rest = rest[0], rest[1:]
    elif "--config" in rest:
        at = rest.index("--config")
        if at + 1 == len(rest) or rest[at + 1].startswith("-"):
            raise _UsageError("--config needs a YAML or JSON file of flags (see --help)")
        path, rest = rest[at + 1], rest[:at] + rest[at + 2 :]
    else:
        return rest
    try:
        return flags_from_file(Path(path)) + rest
    except FlagFileError as error:
        raise _UsageError(str(error)) from None


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch, close the connections between the processes before exiting
    (what torch asks of every distributed program; a process torn down with them open can abort)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _UsageError(Exception):
    """Flags the parser rejects (exit status 2, as argparse's)."""


def _usage_error(message: str):
    raise _UsageError(f"{message} (see --help)")


if __name__ == "__main__":
    sys.exit(main())
