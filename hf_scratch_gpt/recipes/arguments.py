"""The training arguments every recipe shares, checked as they are built: a bad value, or hardware a setting
needs and lacks, fails before anything starts."""

import os
import shutil
import sys
from dataclasses import dataclass, field

import torch
import transformers
from packaging import version
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from ..artifacts import RESUME_LAST


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
        "help": "Train in bf16 autocast with fp32 weights (default: GPUs with bf16; on CPUs with AMX or "
                "AVX512-BF16, where a timed step at the run's shape is faster in it than in fp32; fp32 elsewhere). "
                "false forces fp32."})
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
        if self.resume_from_checkpoint and self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _check_resumable_on_cpus()
        if self.bf16 is None and not self.measures_precision(on_cpu):
            self.bf16 = not self.fp16 and native_bf16(on_cpu)
        if self.bf16 is not False and on_cpu:
            self.use_cpu = True  # transformers takes bf16 without a GPU only when told it trains on the CPU
        super().__post_init__()  # sets torch_compile where a compile backend or mode is given
        if self.torch_compile and on_cpu:
            _check_cpp_compiler()


    def measures_precision(self, on_cpu: bool) -> bool:
        """Whether the default precision waits for the model, to be timed at the run's shape (`Run.trainer`): on a
        CPU that computes bf16 natively, where bf16 autocast is faster at some shapes and slower at others."""
        return self.bf16 is None and on_cpu and not self.fp16 and not self.deepspeed and native_bf16(on_cpu)


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
        _check_positive(name, getattr(args, name))
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps={args.max_steps} is invalid: give a positive number of steps, or -1 to "
                         "train for --num_train_epochs.")
    if args.max_steps == -1:
        _check_positive("num_train_epochs", args.num_train_epochs)
    for name, strategy in (("eval_steps", args.eval_strategy), ("save_steps", args.save_strategy)):
        if strategy == "steps" and getattr(args, name) is not None:
            _check_positive(name, getattr(args, name))
    for name in ("weight_decay", "warmup_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name}={getattr(args, name)} is invalid: it must be >= 0.")
    if args.save_total_limit is not None and args.save_total_limit <= 0:
        raise ValueError(f"--save_total_limit={args.save_total_limit} is invalid: keep at least 1 checkpoint "
                         "(or leave it unset to keep them all).")


def _check_resumable_on_cpus() -> None:
    """transformers 5.16-5.17 reload the optimizer state of a run on several CPU processes onto device `cpu:<rank>`,
    which torch cannot restore: say so before the run starts, not after it has prepared its data."""
    if version.parse(transformers.__version__) < version.parse("5.18"):
        raise ValueError(f"Resuming a run on several CPU processes needs transformers >= 5.18 (this is "
                         f"{transformers.__version__}, whose Trainer cannot reload the optimizer state there): "
                         "pip install --upgrade 'transformers>=5.18'.")


def _check_cpp_compiler() -> None:
    """torch.compile builds its CPU kernels with a C++ compiler (inductor's default, or $CXX): without one it
    fails at the first step, after the data is prepared. Say so first."""
    compiler = os.environ.get("CXX") or {"darwin": "clang++", "win32": "cl"}.get(sys.platform, "g++")
    if shutil.which(compiler) is None:
        raise ValueError(f"--torch_compile on the CPU needs a C++ compiler, and {compiler} was not found: install "
                         "one (or point CXX at it), or train without --torch_compile.")


def _check_positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"--{name}={value} is invalid: it must be positive.")
