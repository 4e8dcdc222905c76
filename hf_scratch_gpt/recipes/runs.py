"""What every recipe run shares, from start to end (`recipe_run`): training arguments checked before anything
starts, the seed, a push checked before training, the checkpoint a run resumes from, an output folder that is
never left half-written, the files every run leaves (arguments, the file that reproduces the run, loss plot,
results), and an ending where every process waits for the saved folder before process 0 pushes it.

Trainer writes a checkpoint's `trainer_state.json` last, so a checkpoint whose state parses was written
whole; one cut off by a kill is passed over when resuming. The final files are written into a hidden
staging folder and moved into place at the end.
"""

import copy
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from importlib.metadata import version
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy

from ..hub import hub_login, plot_losses, push_to_hub

logger = logging.getLogger(__name__)

RESUME_LAST = "last"  # --resume_from_checkpoint last: the newest complete checkpoint in the output folder
_CHECKPOINT = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults the recipes share (the book's fine-tuning settings: batch 8, AdamW
    5e-5 with weight decay 0.1, an evaluation and a checkpoint every epoch, the last two kept), checked as they
    are built (a bad value fails before anything starts), whose `resume_from_checkpoint` also takes `last`.
    Each recipe's subclass overrides only what differs."""

    _argument_group_name = "training"

    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best among them)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers."})
    bf16: bool | None = field(default=None, metadata={
        "help": "Train in bf16 autocast with fp32 weights (default: where the hardware computes bf16 natively: "
                "CPUs with AMX or AVX512-BF16, GPUs with bf16; fp32 elsewhere). false forces fp32."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": f"Continue an interrupted run from this checkpoint folder, or '{RESUME_LAST}' for the newest "
                "complete one in --output_dir."})

    def __post_init__(self):
        _check_training_args(self)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            # Without GPUs, Trainer joins the processes torchrun / accelerate started only when told to use
            # the CPU; otherwise each would train alone, all of them writing the same output folder.
            self.use_cpu = True
        on_cpu = self.use_cpu or not torch.accelerator.is_available()
        if self.bf16 is None:
            self.bf16 = not self.fp16 and native_bf16(on_cpu)
        if self.bf16 and on_cpu:
            self.use_cpu = True  # transformers takes bf16 without a GPU only when told it trains on the CPU
        super().__post_init__()  # sets torch_compile where a compile backend or mode is given
        if self.torch_compile and on_cpu:
            _check_cpp_compiler()


def native_bf16(on_cpu: bool) -> bool:
    """Whether the hardware training runs on computes bf16 natively, where autocast to it pays: a CPU with AMX or
    AVX512-BF16 (about 2-3x fp32's matmul rate), a GPU with bf16 (Ampere on; CUDA or ROCm)."""
    if not on_cpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, flag, lambda: False)() for flag in flags)


def _check_training_args(args) -> None:
    """Refuse settings that Trainer and torch accept silently or trip over only later."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "learning_rate"):
        _require_positive(name, getattr(args, name))
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps={args.max_steps} is invalid: give a positive number of steps, or -1 to "
                         "train for --num_train_epochs.")
    if args.max_steps == -1:
        _require_positive("num_train_epochs", args.num_train_epochs)
    for name, strategy in (("eval_steps", args.eval_strategy), ("save_steps", args.save_strategy)):
        if strategy == "steps" and getattr(args, name) is not None:
            _require_positive(name, getattr(args, name))
    if args.weight_decay < 0:
        raise ValueError(f"--weight_decay={args.weight_decay} is invalid: it must be >= 0.")
    if args.save_total_limit is not None and args.save_total_limit <= 0:
        raise ValueError(f"--save_total_limit={args.save_total_limit} is invalid: keep at least 1 checkpoint "
                         "(or leave it unset to keep them all).")


def _check_cpp_compiler() -> None:
    """torch.compile builds its CPU kernels with a C++ compiler (inductor's default, or $CXX): without one it
    fails at the first step, after the data is prepared. Say so first."""
    compiler = os.environ.get("CXX") or {"darwin": "clang++", "win32": "cl"}.get(sys.platform, "g++")
    if shutil.which(compiler) is None:
        raise ValueError(f"--torch_compile on the CPU needs a C++ compiler, and {compiler} was not found: install "
                         "one (or point CXX at it), or train without --torch_compile.")


def _require_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"--{name}={value} is invalid: it must be positive.")


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names: a checkpoint folder, or `last` for the newest
    complete one in the output folder."""
    requested = training_args.resume_from_checkpoint
    if requested is None:
        return None
    if requested != RESUME_LAST:
        if not _is_complete(Path(requested)):
            raise ValueError(f"--resume_from_checkpoint {requested} is not a complete checkpoint (a checkpoint-N "
                             f"folder with its {TRAINER_STATE_NAME}); give one, or '{RESUME_LAST}'.")
        return requested
    output_dir = Path(training_args.output_dir)
    newest_first = sorted(_checkpoints(output_dir), key=lambda c: -int(_CHECKPOINT.fullmatch(c.name)[1]))
    for checkpoint in newest_first:
        if _is_complete(checkpoint):
            return str(checkpoint)
        logger.warning("Passing over %s: it was not written whole (the run stopped while saving it).", checkpoint)
    raise ValueError(f"--resume_from_checkpoint {RESUME_LAST}: {output_dir} holds no complete checkpoint to "
                     "resume from; start the run without the flag.")


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return [path for path in output_dir.iterdir() if _CHECKPOINT.fullmatch(path.name) and path.is_dir()]


def _is_complete(checkpoint: Path) -> bool:
    try:
        return isinstance(json.loads((checkpoint / TRAINER_STATE_NAME).read_text()), dict)
    except (OSError, ValueError):
        return False


def check_output_dir(output_dir: Path) -> None:
    """Refuse an output folder that is a file or cannot be written, before any work is done."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"Output folder {output_dir} is a file; choose another --output_dir.")
    existing = next(path for path in (output_dir.absolute(), *output_dir.absolute().parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"Output folder {output_dir} cannot be created: {existing} is a file.")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ValueError(f"Output folder {output_dir} cannot be written ({error.strerror} in {existing}); "
                         "choose another --output_dir.") from None


@contextmanager
def output_folder(output_dir: Path):
    """Around a whole run: check the folder first, and if the run fails, remove the folder again when
    this run created it and left nothing in it worth keeping (a complete checkpoint or a saved model)."""
    check_output_dir(output_dir)
    created = not output_dir.exists()
    try:
        yield output_dir
    except BaseException:
        if created and output_dir.is_dir() and not any(map(_worth_keeping, output_dir.iterdir())):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def _worth_keeping(path: Path) -> bool:
    if path.name.startswith("."):  # a staging folder
        return False
    return _is_complete(path) if _CHECKPOINT.fullmatch(path.name) else True


def write_training_args(folder: Path, training_args) -> None:
    """The run's arguments as JSON (Trainer's own copy is a pickle), with the number of processes it ran on."""
    arguments = {**training_args.to_dict(), "world_size": training_args.world_size}
    (folder / "training_args.json").write_text(json.dumps(arguments, indent=2) + "\n")


@contextmanager
def saving_into(output_dir: Path):
    """Yield a hidden staging folder inside `output_dir` for the final files, then move them in. A run
    killed or failing while saving leaves the folder as it was, its checkpoints intact."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(".saving-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        yield staging
        for item in staging.iterdir():
            target = output_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            resume = f" with --resume_from_checkpoint {RESUME_LAST}" if _checkpoints(output_dir) else ""
            raise OSError(error.errno, f"No space left on the device while saving to {output_dir}; free some "
                                       f"space and run again{resume}.") from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ a whole run


@dataclass
class Run:
    """A recipe run in progress: where it writes, the arguments Trainer gets (pushing off: the run pushes
    its finished folder itself), the checkpoint it resumes from, and the arguments that reproduce it."""

    output_dir: Path
    training_args: RecipeTrainingArguments
    trainer_args: RecipeTrainingArguments
    checkpoint: str | None
    command: str
    arguments: tuple
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def trainer(self, model, datasets, tokenizer, data_collator, callbacks=None, trainer_class=Trainer, **options):
        """The recipe's Trainer, with the run's arguments, on the `train` and `validation` splits of `datasets`;
        without a validation split, nothing is evaluated (and no best checkpoint picked)."""
        if datasets.get("validation") is None:
            self.trainer_args.eval_strategy = IntervalStrategy.NO
            self.trainer_args.load_best_model_at_end = False
            self.trainer_args.eval_on_start = False
        return trainer_class(model=model, args=self.trainer_args, train_dataset=datasets["train"],
                             eval_dataset=datasets.get("validation"), processing_class=tokenizer,
                             data_collator=data_collator, callbacks=callbacks, **options)

    def save(self, trainer, write_files: Callable[[Path], None], results: dict, results_file: str,
             tokens_per_step: int | None = None) -> None:
        """On process 0, write the final folder: the loss plot (which cards show), what `write_files(staging)`
        writes (model, tokenizer, card), the run's arguments, the config file that reproduces it, and `results`
        (written last, so `write_files` may still add to them)."""
        if not trainer.is_world_process_zero():
            return
        with saving_into(self.output_dir) as staging:
            plot_losses(trainer.state.log_history, staging / "loss.png", tokens_per_step)
            write_files(staging)
            write_training_args(staging, self.training_args)
            write_run_config(staging / RUN_CONFIG, self.command, *self.arguments, self.training_args)
            (staging / results_file).write_text(json.dumps(results, indent=2) + "\n")


@contextmanager
def recipe_run(training_args: RecipeTrainingArguments, *arguments, command: str, what: str):
    """Around a whole recipe run: the output folder checked (and removed again if the run fails before leaving
    anything worth keeping), the seed set before any model exists, a push checked before training, the
    checkpoint to resume from found. At the end, every process waits until process 0 has saved the folder
    (so that each returns with it written), then process 0 pushes it when asked. `arguments` are the
    recipe's other argument dataclasses and `command` its CLI name, for the file that reproduces the run; `what`
    names it in the commit."""
    with output_folder(Path(training_args.output_dir)) as output_dir:
        set_seed(training_args.seed)
        trainer_args, repo_id = _prepare_push(training_args)
        yield Run(output_dir, training_args, trainer_args, resume_checkpoint(training_args), command, arguments)
        training_args.distributed_state.wait_for_everyone()
        if repo_id and training_args.process_index == 0:
            url = push_to_hub(output_dir, repo_id, token=training_args.hub_token,
                              private=training_args.hub_private_repo, revision=training_args.hub_revision,
                              commit_message=f"{what} with hf-scratch-gpt")
            print(f"Pushed {output_dir} to {url}")


def _prepare_push(training_args):
    """Check a requested push before training, and give Trainer a copy of the arguments with its own pushing
    off (it would push each checkpoint, then overwrite our card with its own). Returns those arguments and the
    repo id to push the finished folder to (None when not pushing)."""
    if not training_args.push_to_hub:
        return training_args, None
    _, repo_id = hub_login(training_args.hub_model_id or Path(training_args.output_dir).resolve().name,
                           training_args.hub_token)
    trainer_args = copy.copy(training_args)
    trainer_args.push_to_hub = False
    return trainer_args, repo_id


# ------------------------------------------------------------------------------- the file that reproduces a run

RUN_CONFIG = "run.yaml"
_NOT_REPRODUCED = {"resume_from_checkpoint", "hub_token", "push_to_hub_token"}  # how it ran, or secret


def write_run_config(path: Path, command: str, *arguments) -> None:
    """The flags that differ from their defaults, as a YAML file the command reads back
    (`hf-scratch-gpt pretrain run.yaml` reruns the run)."""
    flags = {}
    for args in arguments:
        flags.update(_changed_flags(args))
    header = (f"# The flags of this run that differ from their defaults (hf-scratch-gpt {version('hf-scratch-gpt')}).\n"
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
