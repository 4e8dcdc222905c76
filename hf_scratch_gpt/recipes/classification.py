"""Classification fine-tuning (chapter 6, with LoRA from appendix E): labelled texts, a pretrained
base, PEFT or the book's partial unfreezing, and `transformers.Trainer`."""

from dataclasses import dataclass, field

import numpy as np
from transformers import DataCollatorWithPadding, TrainerCallback

from ..artifacts import Card, save_model, write_adapter_card, write_card
from ..command import Command
from ..data import build_classification_dataset, load_labelled
from ..loading import load_config, load_model, load_tokenizer
from ..modeling_scratch_gpt import ScratchGPTForSequenceClassification
from .arguments import RecipeTrainingArguments
from .finetuning import FineTuningArguments, check_whole_weights, context_max_length, make_trainable
from .runs import Produced, recipe_run, report, write_results


@dataclass
class ClassificationArguments(FineTuningArguments):
    """The base model, the labelled data and what is trained."""

    data: str = field(metadata={"help": "TSV / CSV / JSON(L) / Parquet file, folder or glob, or a Hub dataset."})
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    balance: bool = field(default=False, metadata={"help": "Undersample every class to the smallest one."})
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2],
                                         metadata={"help": "Train, validation and test fractions."})


@dataclass
class ClassificationTrainingArguments(RecipeTrainingArguments):
    """The book's classification fine-tuning: 5 epochs, the most accurate epoch kept."""

    output_dir: str | None = field(default="scratch-gpt-classifier", metadata={"help": "Where the model goes."})
    num_train_epochs: float = field(default=5, metadata={"help": "Epochs over the training split."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "End with the best checkpoint."})
    metric_for_best_model: str | None = field(default="accuracy", metadata={"help": "What 'best' means."})


def classification_metrics(label_names: list[str]):
    """`compute_metrics` for Trainer: accuracy, and precision / recall / F1 of every class."""

    def compute(prediction) -> dict:
        predicted, actual = _predicted_ids(prediction.predictions), prediction.label_ids
        metrics = {"accuracy": float((predicted == actual).mean())}
        for i, name in enumerate(label_names):
            hits = int(((predicted == i) & (actual == i)).sum())
            precision = hits / max(int((predicted == i).sum()), 1)
            recall = hits / max(int((actual == i).sum()), 1)
            metrics[f"precision_{name}"] = precision
            metrics[f"recall_{name}"] = recall
            metrics[f"f1_{name}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return metrics

    return compute


def _predicted_ids(predictions) -> np.ndarray:
    """Class ids from what Trainer gathered: the logits, first of a tuple when the model returned more."""
    return (predictions[0] if isinstance(predictions, tuple) else predictions).argmax(-1)


def classify(args: ClassificationArguments, training_args: ClassificationTrainingArguments | None = None,
             callbacks: list[TrainerCallback] | None = None) -> Produced:
    """Fine-tune a classifier; returns the test metrics (`test_accuracy`, ...) and, as `.files`, what it wrote.

    The output folder holds the merged model (loads with `AutoModelForSequenceClassification` and
    `pipeline("text-classification")`, label names included), the tokenizer, `loss.png`, a
    `README.md` card with the confusion matrix, and for LoRA the PEFT adapter in `adapter/`.
    `callbacks` join Trainer's (early stopping, trackers, ...).
    """
    training_args = training_args or ClassificationTrainingArguments()
    with recipe_run(training_args, args, command="classify", what="Classifier") as run:
        config = load_config(args.model)
        max_length = context_max_length(args.max_length, config)
        tokenizer = load_tokenizer(args.model, pad_with_eos=True, config=config)
        with training_args.main_process_first(desc="tokenizing"):  # other ranks read datasets' cache
            datasets = build_classification_dataset(
                load_labelled(args.data, args.text_column, args.label_column), tokenizer, max_length,
                tuple(args.split_fractions), args.split_seed, args.balance,
            )
        label_names = datasets["train"].features["labels"].names
        model = load_model(args.model, ScratchGPTForSequenceClassification, tokenizer, config=config,
                           num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                           label2id={name: i for i, name in enumerate(label_names)},
                           pad_token_id=tokenizer.pad_token_id)
        model = make_trainable(model, args, "SEQ_CLS", head="score")
        trainer = run.trainer(model, datasets, tokenizer, DataCollatorWithPadding(tokenizer), callbacks,
                              compute_metrics=classification_metrics(label_names))
        check_whole_weights(trainer)
        trainer.train(resume_from_checkpoint=run.checkpoint)
        test = trainer.predict(datasets["test"], metric_key_prefix="test") if "test" in datasets else None
        metrics = dict(test.metrics) if test else trainer.evaluate()

        confusion = None
        if test is not None:
            confusion = np.zeros((len(label_names), len(label_names)), dtype=int)
            np.add.at(confusion, (test.label_ids, _predicted_ids(test.predictions)), 1)
        if trainer.is_world_process_zero():
            with run.final_folder(trainer) as staging:
                saved = save_model(model, tokenizer, staging)
                card = write_card(staging, Card(
                    "classify", saved, run.output_dir.name, pipeline_tag="text-classification", data=args.data,
                    base_model=args.model, mode=args.mode, metrics=metrics,
                    hyperparameters=run.hyperparameters(args.mode), details=dict(
                        dataset_sizes={split: len(d) for split, d in datasets.items()}, label_names=label_names,
                        confusion=confusion.tolist() if confusion is not None else None)))
                if args.mode == "lora":
                    write_adapter_card(staging / "adapter", card, args.model)
                write_results(staging / "test_results.json", metrics)
    return run.produced(metrics)


def _classify_command(args, training_args) -> None:
    report(classify(args, training_args), training_args, "the classifier", ("test_accuracy", "eval_accuracy"))


command = Command(_classify_command, (ClassificationArguments, ClassificationTrainingArguments), flag_file=True)
