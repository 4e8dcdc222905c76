"""Model cards (`README.md`), rendered with huggingface_hub's `ModelCard` from the `model_cards/` templates.
Every card of ours is one `Card`, what to say, written by `write_card`; the adapter folder of a LoRA run gets the
same card with PEFT's metadata (`write_adapter_card`)."""

import shutil
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

PACKAGE_URL = "https://pypi.org/project/hf-scratch-gpt/"
# Cards show this where the folder's path or Hub id goes; `push_to_hub` writes the repo id in its place.
REPO_PLACEHOLDER = "PATH_OR_REPO"
# Metrics that time the run rather than measure the model: kept out of cards.
_RUN_METRICS = ("runtime", "per_second", "preparation_time", "epoch")


@dataclass
class Card:
    """What a card says: its template (`model_cards/<template>.md`), the model it describes and what the run or
    conversion that made it knows. `details` holds the values only that template shows."""

    template: str
    model: object  # the PreTrainedModel described: its config and size fill the architecture table
    model_name: str
    pipeline_tag: str = "text-generation"
    data: str | None = None
    base_model: str | None = None
    mode: str | None = None
    metrics: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    custom_code: bool = True
    tags: tuple = ()
    details: dict = field(default_factory=dict)


def write_card(folder: Path, card: Card) -> ModelCard:
    """Render `card` under the metadata every card of ours carries (library, task, tags, license, base model,
    data sets, a model-index of the metrics measured) into `folder/README.md`."""
    dataset = _dataset_id(card.data) if card.data else None
    metrics = {key: value for key, value in card.metrics.items() if not key.endswith(_RUN_METRICS)}
    card_data = ModelCardData(
        model_name=card.model_name,
        library_name="transformers",
        pipeline_tag=card.pipeline_tag,
        tags=["scratch_gpt", *(["custom_code"] if card.custom_code else []), card.pipeline_tag,
              *(["lora", "peft"] if card.mode == "lora" else []), *card.tags],
        license="apache-2.0",
        base_model=_hub_id(card.base_model),
        datasets=[dataset] if dataset else None,
        eval_results=_eval_results(metrics, card.pipeline_tag, dataset) or None,
    )
    rendered = ModelCard.from_template(
        card_data,
        template_str=_template(card.template),
        model_name=card.model_name,
        repo=REPO_PLACEHOLDER,
        package_url=PACKAGE_URL,
        base_model=card.base_model,
        data=card.data,
        mode=card.mode,
        config=card.model.config,
        architecture=_table(_architecture(card.model)),
        results=_table(metrics, "metric", "{:.4f}") if metrics else None,
        hyperparameters=_table(card.hyperparameters) if card.hyperparameters else None,
        **card.details,
    )
    rendered.save(Path(folder) / "README.md")
    return rendered


def write_adapter_card(adapter_dir: Path, card: ModelCard, base_model: str | None = None) -> ModelCard:
    """The model's card, with PEFT's metadata, for its LoRA adapter folder (PEFT's own card would be an empty
    form): with `base_model`, prefaced by how to put the adapter on it; with the loss plot, where there is one."""
    adapter_card = ModelCard(str(card))
    adapter_card.data.library_name = "peft"
    if base_model is not None:
        adapter_card.text = (
            f"\n*This folder is the LoRA adapter of the model below, for the base model `{base_model}`: "
            f"`PeftModel.from_pretrained(AutoModelFor...from_pretrained(\"{base_model}\"), \"{REPO_PLACEHOLDER}\", "
            "subfolder=\"adapter\")`. The parent folder holds the same model with the adapter merged in.*\n"
            + adapter_card.text
        )
    adapter_card.save(Path(adapter_dir) / "README.md")
    if (Path(adapter_dir).parent / "loss.png").is_file():
        shutil.copyfile(Path(adapter_dir).parent / "loss.png", Path(adapter_dir) / "loss.png")
    return adapter_card


def training_hyperparameters(training_args, wall_seconds: float, mode: str | None = None,
                             precision_note: str | None = None) -> dict:
    """The table of how a model was trained, from its `TrainingArguments`; a fine-tuning's (`mode`) starts with
    what trained and for how many epochs."""
    args = training_args.to_dict()  # enums as their values
    fine_tuning = {"what trained": mode, "epochs": training_args.num_train_epochs} if mode else {}
    return {
        **fine_tuning,
        "batch size (per device)": args["per_device_train_batch_size"],
        "gradient accumulation": args["gradient_accumulation_steps"],
        "processes": training_args.world_size,
        "global batch size": args["per_device_train_batch_size"] * args["gradient_accumulation_steps"]
                             * training_args.world_size,
        "learning rate": f"{args['learning_rate']} ({args['lr_scheduler_type']}, warmup {args['warmup_steps']})",
        "optimizer": f"{args['optim']} (betas {args['adam_beta1']}, {args['adam_beta2']}; "
                     f"weight decay {args['weight_decay']})",
        "gradient clipping": args["max_grad_norm"],
        "precision": ("bf16 autocast, fp32 weights" if args["bf16"] else "fp16 autocast" if args["fp16"] else "fp32")
                     + (f" ({precision_note})" if precision_note else ""),
        "seed": args["seed"],
        "wall time": f"{wall_seconds:.0f} s",
    }


def _template(name: str) -> str:
    """A card template: installed as package data (`hf_scratch_gpt.model_cards`), or in a source checkout read
    from `model_cards/` at the top of the repository, where they live."""
    try:
        folder = files("hf_scratch_gpt.model_cards")
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[2] / "model_cards"
    return (folder / f"{name}.md").read_text()


def _hub_id(name) -> str | None:
    """`name` if it reads as a Hub repo id (owner/name) and is not a local path, else None: card metadata
    can only link to the Hub; a local folder stays in the card's text."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(str(name))
    except ValueError:
        return None
    return str(name) if "/" in str(name) else None


def _dataset_id(data) -> str:
    """How card metadata names a data set: its Hub id, or the name of the local file or folder."""
    return _hub_id(data) or Path(str(data)).name


def _architecture(model) -> dict:
    config = model.config
    fields = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias", "bias",
              "activation_function", "tie_word_embeddings")
    return {"parameters": f"{model.num_parameters():,}", **{name: getattr(config, name) for name in fields}}


def _table(rows: dict, header: str = "setting", float_format: str = "{}") -> str:
    """A two-column markdown table."""
    lines = [f"| {header} | value |", "|---|---|"]
    for name, value in rows.items():
        lines.append(f"| {name} | {float_format.format(value) if isinstance(value, float) else value} |")
    return "\n".join(lines)


def _eval_results(metrics: dict, task_type: str, dataset: str | None) -> list[EvalResult]:
    """The model's own metrics as model-index entries: `eval_*` on the validation split, the rest on the
    test split; the base model's (`base_*`) stay out."""
    results = []
    for key, value in metrics.items():
        if dataset is None or key.startswith("base_") or not isinstance(value, float | int):
            continue
        split = "validation" if key.startswith("eval_") else "test"
        metric = key.removeprefix("eval_").removeprefix("test_")
        results.append(EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset,
                                  dataset_split=split, metric_type=metric,
                                  metric_name=f"{split} {metric.replace('_', ' ')}", metric_value=float(value)))
    return results
