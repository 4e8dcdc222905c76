"""Training recipes: thin assemblies of datasets, a model, PEFT and `transformers.Trainer`.

Each recipe takes dataclasses of arguments (the CLI fills them with `HfArgumentParser`), so it is
as usable from Python as from the shell.
"""

from .classification import ClassificationArguments, ClassificationTrainingArguments, classify
from .instruction import InstructionArguments, InstructionTrainingArguments, instruct
from .pretraining import DataArguments, ModelArguments, PretrainingArguments, pretrain

__all__ = [
    "ClassificationArguments",
    "ClassificationTrainingArguments",
    "DataArguments",
    "InstructionArguments",
    "InstructionTrainingArguments",
    "ModelArguments",
    "PretrainingArguments",
    "classify",
    "instruct",
    "pretrain",
]
