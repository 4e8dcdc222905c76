"""Training recipes: thin assemblies of datasets, a model, PEFT and `transformers.Trainer`.

Each recipe takes dataclasses of arguments (the CLI fills them with `HfArgumentParser`), so it is
as usable from Python as from the shell. A recipe is one module here: its argument dataclasses (the
training ones subclass `runs.RecipeTrainingArguments` and override only what differs) and a function
that, inside `runs.recipe_run`, builds its data and model, trains with `Run.trainer`, and hands the
files only it writes to `Run.save`. The command line gets it with one `Recipe` entry in `cli.COMMANDS`.
"""

from .classification import ClassificationArguments, ClassificationTrainingArguments, classify
from .dpo import DPOTrainingArguments, PreferenceArguments, dpo
from .instruction import InstructionArguments, InstructionTrainingArguments, instruct
from .pretraining import DataArguments, ModelArguments, PretrainingArguments, pretrain

__all__ = [
    "ClassificationArguments",
    "ClassificationTrainingArguments",
    "DPOTrainingArguments",
    "DataArguments",
    "InstructionArguments",
    "InstructionTrainingArguments",
    "ModelArguments",
    "PreferenceArguments",
    "PretrainingArguments",
    "classify",
    "dpo",
    "instruct",
    "pretrain",
]
