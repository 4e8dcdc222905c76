"""The `hf-scratch-gpt` command: a thin shell over the Python API.

Each command declares its flags as dataclasses read by `HfArgumentParser` (each checks its own values as it is
built); the training commands are the recipes of `hf_scratch_gpt.recipes`, one entry each in `COMMANDS`, and
also read their flags from a YAML or JSON file. Errors print one line and exit non-zero (`--debug` shows the
traceback).
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser


@dataclass
class SamplingArguments:
    _argument_group_name = "generation"

    max_new_tokens: int = field(default=50, metadata={"help": "How many tokens to add at most (capped by the room left in the context)."})
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily; above 0 samples."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k most likely tokens only."})
    top_p: float | None = field(default=None, metadata={"help": "Sample from the smallest set with this mass."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens={self.max_new_tokens} is invalid: it must be positive.")
        if self.temperature < 0:
            raise ValueError(f"--temperature={self.temperature} is invalid: it must be >= 0.")


@dataclass
class GenerateArguments(SamplingArguments):
    prompt: str = field(default="Every effort moves you", metadata={"help": "Text to continue."})
    stream: bool = field(default=False, metadata={"help": "Print tokens as they are generated."})


@dataclass
class ChatArguments(SamplingArguments):
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply."})


def _load_for_generation(args: SamplingArguments, model_dir: str):
    """Load a saved causal LM (ours, or GPT-2's converted) and its tokenizer."""
    from transformers import set_seed
    from transformers.utils import logging

    from .loading import load_config, load_model, load_tokenizer
    from .modeling_scratch_gpt import ScratchGPTForCausalLM

    logging.disable_progress_bar()  # the reply is the output: no loading bars around it
    set_seed(args.seed)
    config = load_config(model_dir)  # a model of ours or GPT-2's, before its tokenizer is looked at
    tokenizer = load_tokenizer(model_dir, config=config)
    return tokenizer, load_model(model_dir, ScratchGPTForCausalLM, tokenizer, config=config).eval()


def _generate(model, tokenizer, args: SamplingArguments, inputs, streamer=None):
    """`model.generate` with the sampling flags, its reply capped by the room left in the context."""
    import torch

    room = model.config.max_position_embeddings - inputs["input_ids"].shape[1]
    if room <= 0:
        raise ValueError(f"The prompt has {inputs['input_ids'].shape[1]} tokens, which fills the model's context of "
                         f"{model.config.max_position_embeddings}; shorten it.")
    sampling = args.temperature > 0
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=min(args.max_new_tokens, room),
            do_sample=sampling,
            temperature=args.temperature if sampling else None,
            top_k=args.top_k if sampling else None,
            top_p=args.top_p if sampling else None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            streamer=streamer,
        )


def generate_command(args: GenerateArguments, model_dir: str) -> None:
    """Continue a prompt with a saved model."""
    from transformers import TextStreamer

    tokenizer, model = _load_for_generation(args, model_dir)
    inputs = tokenizer(args.prompt, return_tensors="pt")
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("--prompt is empty; give some text to continue.")
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
    output = _generate(model, tokenizer, args, inputs, streamer)
    if streamer is None:
        print(tokenizer.decode(output[0], skip_special_tokens=True))


def chat_command(args: ChatArguments, model_dir: str) -> None:
    """Answer instructions read line by line from standard input, streaming each reply. Every line is a
    new conversation in the model's chat template (the models `instruct` trains saw one turn each)."""
    from transformers import TextStreamer

    tokenizer, model = _load_for_generation(args, model_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir} has no chat template; chat with a model trained by `hf-scratch-gpt instruct`, "
                         "or use `hf-scratch-gpt generate` to continue plain text.")
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type an instruction and press Enter; an empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line.strip():
            break
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": line.strip()}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        _generate(model, tokenizer, args, inputs, TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))


BOOK_SUFFIXES = (".pth", ".pt")  # what the book's torch.save(model.state_dict(), ...) files are called


@dataclass
class ConvertArguments:
    to: Literal["book"] | None = field(default=None, metadata={
        "help": "'book': write a model of ours as the book's state dict, a .pth file its GPTModel loads."})
    n_heads: int | None = field(default=None, metadata={
        "help": "From a book checkpoint: its attention heads, which the tensors do not show (default: GPT-2's for "
                "its width: 768 -> 12, 1024 -> 16, 1280 -> 20, 1600 -> 25)."})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "From a book checkpoint with LoRA layers (appendix E): the alpha it was trained with, which the "
                "file does not hold (default: the book's, 16)."})
    tokenizer: str = field(default="openai-community/gpt2", metadata={
        "help": "From a book checkpoint: the tokenizer to save with it: a folder of GPT-2's encoder.json and "
                "vocab.bpe (as the book downloads them) or of a saved tokenizer, or a Hub id."})

    def __post_init__(self):
        if self.n_heads is not None and self.n_heads <= 0:
            raise ValueError(f"--n_heads={self.n_heads} is invalid: it must be a positive integer.")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha={self.lora_alpha} is invalid: the LoRA scale must be positive.")


def convert_command(args: ConvertArguments, source: str, destination: str) -> None:
    """GPT-2 folder or Hub id -> ScratchGPT folder, or ScratchGPT folder -> GPT-2 folder (by the source's type);
    a book checkpoint (.pth) -> ScratchGPT folder, or with `--to book` a ScratchGPT folder -> book checkpoint."""
    from_book = Path(source).suffix in BOOK_SUFFIXES and args.to is None
    book_flags = [f"--{name}" for name in ("n_heads", "lora_alpha") if getattr(args, name) is not None]
    if book_flags and not from_book:
        raise ValueError(f"{' '.join(book_flags)} apply to a book checkpoint (a .pth file) only; {source} is not one.")
    if args.to == "book":
        return _convert_to_book(source, Path(destination))
    output = Path(destination)
    if output.is_dir() and any(output.iterdir()):
        raise ValueError(f"Output folder {destination} already exists and is not empty; choose another destination.")
    if from_book:
        return _convert_from_book(args, source, output)

    from .convert import to_gpt2
    from .hub import write_conversion_card
    from .loading import has_tokenizer, load_config, load_model, load_tokenizer
    from .modeling_scratch_gpt import ScratchGPTForCausalLM
    from .recipes.runs import output_folder, saving_into

    from_gpt2 = load_config(source).model_type == "gpt2"
    scratch = load_model(source, ScratchGPTForCausalLM)
    converted = scratch if from_gpt2 else to_gpt2(scratch)
    tokenizer = load_tokenizer(source) if has_tokenizer(source) else None  # else convert the weights alone
    with output_folder(output), saving_into(output) as staging:
        converted.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_conversion_card(staging, model_name=output.name, source=source, scratch_model=scratch,
                              target_type=converted.config.model_type)
    print(f"Saved {type(converted).__name__} to {destination}")


def _convert_from_book(args: ConvertArguments, source: str, output: Path) -> None:
    """A folder of ours from the book's checkpoint. With LoRA layers: the model they make (merged) in the folder,
    the PEFT adapter in `adapter/` and the weights it goes on in `base/`."""
    import copy

    from .book import BOOK_LORA_ALPHA, from_book
    from .hub import write_book_card
    from .loading import load_tokenizer
    from .recipes.runs import output_folder, saving_into

    model = from_book(source, {"n_heads": args.n_heads} if args.n_heads else None, args.lora_alpha)
    tokenizer = load_tokenizer(args.tokenizer)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"--tokenizer {args.tokenizer} has {len(tokenizer)} tokens but the checkpoint's vocabulary "
                         f"holds {model.config.vocab_size}; give the tokenizer the model was trained with.")
    lora = type(model).__name__.startswith("Peft")
    with output_folder(output), saving_into(output) as staging:
        if lora:
            model.save_pretrained(staging / "adapter")
            copy.deepcopy(model).unload().save_pretrained(staging / "base")
            model = model.merge_and_unload()
        folders = (staging, staging / "adapter", staging / "base") if lora else (staging,)
        model.save_pretrained(staging)
        for folder in folders:
            tokenizer.save_pretrained(folder)
        write_book_card(staging, model_name=output.name, source=source, model=model,
                        lora_alpha=(args.lora_alpha or BOOK_LORA_ALPHA) if lora else None)
    print(f"Saved {type(model).__name__} to {output}" + (" (LoRA: merged; adapter/ and base/ beside)" if lora else ""))


def _convert_to_book(source: str, destination: Path) -> None:
    """The book's state dict of a model of ours, written whole or not at all (a temporary file, then renamed)."""
    import os
    import tempfile

    import torch

    from .book import book_config, to_book
    from .loading import load_config, load_model
    from .modeling_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification

    if destination.suffix not in BOOK_SUFFIXES:
        raise ValueError(f"--to book writes a .pth file; {destination} is not named like one.")
    if destination.exists():
        raise ValueError(f"{destination} already exists; choose another destination.")
    if not destination.parent.is_dir():
        raise ValueError(f"Folder {destination.parent} does not exist; create it or choose another destination.")
    config = load_config(source)
    classifier = "ScratchGPTForSequenceClassification" in (config.architectures or [])
    model = load_model(source, ScratchGPTForSequenceClassification if classifier else ScratchGPTForCausalLM,
                       config=config)
    state = to_book(model)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    c = model.config
    head = f", its out_head set to torch.nn.Linear({c.emb_dim}, {c.num_labels}) (chapter 6)" if classifier else ""
    print(f"Saved the book's state dict to {destination}; load it into GPTModel({book_config(c)}){head}")


@dataclass
class ExportArguments:
    format: Literal["gguf", "gpt2"] = field(default="gguf", metadata={
        "help": "gguf: a GGUF file for llama.cpp with an Ollama Modelfile beside it; gpt2: a GPT2LMHeadModel "
                "folder that needs no custom code (what `convert` writes)."})
    dtype: Literal["f32", "f16", "q8_0"] | None = field(default=None, metadata={
        "help": "How the GGUF file stores the weight matrices: f32 (exact, the default), f16 (half the size), "
                "q8_0 (about a quarter)."})

    def __post_init__(self):
        if self.dtype is not None and self.format != "gguf":
            raise ValueError(f"--dtype applies to --format gguf only, not to --format {self.format}.")


def export_command(args: ExportArguments, model_dir: str, destination: str) -> None:
    """A model for llama.cpp and Ollama (GGUF and Modelfile), or as a plain GPT-2 folder."""
    from .export import MODELFILE, export_gguf, require_language_model

    if args.format == "gpt2":
        if require_language_model(model_dir).model_type == "gpt2":
            raise ValueError(f"{model_dir} holds a GPT-2 model already; it needs no export.")
        return convert_command(ConvertArguments(), model_dir, destination)
    path = export_gguf(model_dir, destination, args.dtype or "f32")
    print(f"Saved {path} and {path.parent / MODELFILE}: ollama create NAME -f {path.parent / MODELFILE}")


@dataclass
class PushArguments:
    private: bool = field(default=False, metadata={"help": "Create the repo as private (an existing repo keeps its visibility)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created if missing; default: main)."})
    commit_message: str | None = field(default=None, metadata={"help": "Message of the commit."})


def push_command(args: PushArguments, folder: str, repo_id: str) -> None:
    """Upload a saved folder to the Hub in one commit (token from `hf auth login` or HF_TOKEN)."""
    from .hub import push_to_hub

    _require_model_dir(folder)
    url = push_to_hub(folder, repo_id, private=args.private or None, revision=args.revision,
                      commit_message=args.commit_message)
    print(f"Pushed {folder} to {url}")


def _require_model_dir(path: str) -> None:
    if not Path(path).is_dir():
        raise ValueError(f"Model folder {path!r} does not exist; give a folder written by save_pretrained.")


@dataclass(frozen=True)
class Recipe:
    """A training command: the function `function` of the module `hf_scratch_gpt.recipes.<module>` with its
    argument dataclasses there, what the line it ends with says was saved, and which metrics that line shows."""

    help: str
    module: str
    function: str
    flags: tuple[str, ...]
    saved: str
    shown: tuple[str, ...]
    positionals = ()  # none: everything is a flag, so that a file can hold them all

    def flag_classes(self) -> list:
        return [getattr(self._module(), name) for name in self.flags]

    def run(self, *arguments) -> None:
        metrics = getattr(self._module(), self.function)(*arguments)
        training_args = arguments[-1]
        if training_args.process_index == 0:  # the process that saved
            summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in self.shown)
            print(f"Saved {self.saved} to {training_args.output_dir}" + (f" ({summary})" if summary else ""))

    def _module(self):
        return import_module(f"{__package__}.recipes.{self.module}")  # on use: `--help` stays quick


@dataclass(frozen=True)
class Tool:
    """Any other command: a function of its flag dataclasses, then its positional arguments."""

    help: str
    function: Callable
    flags: tuple = ()
    positionals: tuple[tuple[str, str], ...] = ()  # (name, help)

    def flag_classes(self) -> list:
        return list(self.flags)

    def run(self, *arguments) -> None:
        self.function(*arguments)


COMMANDS = {
    "pretrain": Recipe("Pretrain a model on a corpus with Trainer.", "pretraining", "pretrain",
                       ("ModelArguments", "DataArguments", "PretrainingArguments"), "the model",
                       ("eval_loss", "eval_perplexity")),
    "classify": Recipe("Fine-tune a classifier (LoRA by default) with Trainer.", "classification", "classify",
                       ("ClassificationArguments", "ClassificationTrainingArguments"), "the classifier",
                       ("test_accuracy", "eval_accuracy")),
    "instruct": Recipe("Fine-tune a model to follow instructions (LoRA by default).", "instruction", "instruct",
                       ("InstructionArguments", "InstructionTrainingArguments"), "the instruction model",
                       ("base_test_loss", "test_loss", "word_f1")),
    "dpo": Recipe("Tune an instruction model on preference pairs with DPO (LoRA by default).", "dpo", "dpo",
                  ("PreferenceArguments", "DPOTrainingArguments"), "the preference-tuned model",
                  ("base_eval_loss", "eval_loss", "eval_reward_accuracy", "test_reward_accuracy")),
    "generate": Tool("Continue a prompt with a saved model.", generate_command, (GenerateArguments,),
                     (("model_dir", "Saved model folder."),)),
    "chat": Tool("Chat with an instruction model: one instruction per line on standard input, replies streamed.",
                 chat_command, (ChatArguments,), (("model_dir", "Instruction model folder."),)),
    "convert": Tool("Convert GPT-2 or the book's checkpoints <-> ScratchGPT (direction from the source, or --to).",
                    convert_command, (ConvertArguments,),
                    (("source", "GPT-2 or ScratchGPT folder, GPT-2 Hub id, or the book's .pth checkpoint."),
                     ("destination", "Output folder (a .pth file with --to book)."))),
    "export": Tool("Export a model for llama.cpp and Ollama (GGUF file and Modelfile), or as a plain GPT-2 folder.",
                   export_command, (ExportArguments,), (("model_dir", "Saved causal LM folder (ours or GPT-2's)."),
                                                         ("destination", "Output folder."))),
    "push": Tool("Upload a saved folder to the Hugging Face Hub in one commit (checkpoints stay behind).",
                 push_command, (PushArguments,), (("folder", "Folder to upload (a model or adapter folder)."),
                                                  ("repo_id", "Hub repo: owner/name, or a name under your user."))),
}
CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hf-scratch-gpt COMMAND [flags] [--debug]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "`hf-scratch-gpt COMMAND --help` lists a command's flags. The training commands (pretrain, classify,",
              "instruct, dpo) also read them from a YAML or JSON file: `hf-scratch-gpt pretrain run.yaml` or",
              "`--config run.yaml`; flags on the command line win. Every run writes its own as run.yaml."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv[:1] in (["--version"], ["-V"]):
        print(f"hf-scratch-gpt {version('hf-scratch-gpt')}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    command = COMMANDS[name]
    try:  # parsing too: every argument dataclass checks its values as it is built
        flag_classes = command.flag_classes()
        parser = HfArgumentParser(flag_classes, prog=f"hf-scratch-gpt {name}", description=command.help)
        parser.error = _usage_error  # one line, like every other error
        for arg_name, help_text in command.positionals:
            parser.add_argument(arg_name, help=help_text)
        if isinstance(command, Recipe):
            rest = _flags_with_config_file(rest)
        try:
            outputs = parser.parse_args_into_dataclasses(rest)
        except ValueError as error:
            raise _UsageError(str(error)) from error
        parsed, extra = outputs[: len(flag_classes)], outputs[len(flag_classes) :]
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
    if rest and not rest[0].startswith("-") and rest[0].endswith(CONFIG_FILE_SUFFIXES):
        path, rest = rest[0], rest[1:]
    elif "--config" in rest:
        at = rest.index("--config")
        if at + 1 == len(rest) or rest[at + 1].startswith("-"):
            raise _UsageError("--config needs a YAML or JSON file of flags (see --help)")
        path, rest = rest[at + 1], rest[:at] + rest[at + 2 :]
    else:
        return rest
    return _flags_from_file(Path(path)) + rest


def _flags_from_file(path: Path) -> list[str]:
    """A file's mapping of flag names to values, as command-line flags (lists as several values, `null` left out:
    the flag keeps its default)."""
    import json

    import yaml

    if not path.is_file():
        raise _UsageError(f"Config file {path} does not exist; give a YAML or JSON file of flags.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise _UsageError(f"Config file {path} is not valid YAML or JSON: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise _UsageError(f"Config file {path} holds a {type(values).__name__}, not a mapping of flag names to "
                          "values (for example `max_steps: 100`).")
    flags = []
    for key, value in values.items():
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool)
                                else str(v) for v in items)]
    return flags


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
