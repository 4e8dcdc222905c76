"""Training recipes: thin assemblies of datasets, a model, PEFT and `transformers.Trainer`.

Each recipe takes dataclasses of arguments (the CLI fills them with `HfArgumentParser`), so it is as usable from
Python as from the shell, and returns what it produced (`runs.Produced`: its metrics, and the files it wrote). A
recipe is one module here: its argument dataclasses (the training ones subclass
`arguments.RecipeTrainingArguments` and override only what differs), a function that, inside `runs.recipe_run`,
builds its data and model, trains with `Run.trainer`, and writes its final folder through `Run.final_folder` and
the `artifacts` layer, and the `Command` the CLI runs. Trainer code they share is in `trainer.py`.
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
