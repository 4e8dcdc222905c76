"""What a run leaves for people: the loss plot and the model card (rendered with huggingface_hub)."""

import shutil
from importlib.resources import files
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATES = files(__package__) / "model_cards"


def plot_losses(log_history: list[dict], path: Path, tokens_per_step: int | None = None) -> None:
    """Training and validation loss against steps, with tokens seen on a second axis when known (as the
    book plots pretraining)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    validation = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure, axis = plt.subplots(figsize=(6, 4))
    for points, label, style in ((train, "Training loss", "-"), (validation, "Validation loss", "-.")):
        if points:
            axis.plot(*zip(*points), style, label=label, marker="o" if len(points) < 3 else None)
    axis.set_xlabel("Steps")
    axis.set_ylabel("Loss")
    axis.legend(loc="upper right")
    if tokens_per_step:
        tokens_axis = axis.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
        tokens_axis.set_xlabel("Tokens seen")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_pretraining_card(output_dir: Path, *, config, n_params, data, dataset_sizes, max_length, stride, training_args,
                           metrics, tokens_seen, wall_seconds) -> ModelCard:
    """Write `README.md` for a pretrained model: shape, data, hyper-parameters, results, how to load."""
    return _write_card(
        output_dir, "pretrain.md", "text-generation", config=config, n_params=n_params, data=data,
        dataset_sizes=dataset_sizes, max_length=max_length, stride=stride, args=training_args, metrics=metrics,
        tokens_seen=tokens_seen, wall_seconds=wall_seconds,
    )


def write_classification_card(output_dir: Path, *, base_model, config, data, mode, dataset_sizes, label_names,
                              training_args, metrics, confusion, wall_seconds) -> ModelCard:
    """Write `README.md` for a fine-tuned classifier: base model, data, training, test results with
    the confusion matrix, how to load."""
    return _write_card(
        output_dir, "classify.md", "text-classification", extra_tags=["lora", "peft"] if mode == "lora" else [],
        base_model=base_model, config=config, data=data, mode=mode, dataset_sizes=dataset_sizes,
        label_names=label_names, args=training_args, metrics=metrics,
        confusion=confusion.tolist() if confusion is not None else None, wall_seconds=wall_seconds,
    )


def write_instruction_card(output_dir: Path, *, base_model, config, data, mode, mask_prompt, dataset_sizes,
                           training_args, metrics, examples, wall_seconds) -> ModelCard:
    """Write `README.md` for an instruction-following model: base model, data, prompt format,
    training, test results with a few responses, how to chat with it."""
    return _write_card(
        output_dir, "instruct.md", "text-generation", extra_tags=["lora", "peft"] if mode == "lora" else [],
        base_model=base_model, config=config, data=data, mode=mode, mask_prompt=mask_prompt,
        dataset_sizes=dataset_sizes, args=training_args, metrics=metrics, examples=examples,
        wall_seconds=wall_seconds,
    )


def write_adapter_card(adapter_dir: Path, card: ModelCard, base_model: str) -> ModelCard:
    """The fine-tuned model's card and loss plot, for its LoRA adapter folder: PEFT metadata, and how
    to put the adapter on its base model (PEFT's own card would be an empty form)."""
    adapter_card = ModelCard(str(card))
    adapter_card.data.library_name = "peft"
    adapter_card.text = (
        f"\n*This folder is the LoRA adapter of the model below, for the base model `{base_model}`: "
        "`PeftModel.from_pretrained(AutoModelFor...from_pretrained(BASE), THIS_FOLDER)`. "
        "The parent folder holds the same model with the adapter merged in.*\n" + adapter_card.text
    )
    adapter_card.save(Path(adapter_dir) / "README.md")
    shutil.copyfile(Path(adapter_dir).parent / "loss.png", Path(adapter_dir) / "loss.png")
    return adapter_card


def _write_card(output_dir: Path, template: str, pipeline_tag: str, extra_tags=(), base_model=None, **values):
    """Render a `model_cards/` template under the metadata every card of ours carries."""
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["scratch_gpt", "custom_code", pipeline_tag, *extra_tags],
        license="apache-2.0",
        # The metadata names a base model only by Hub id; a local folder stays in the card's text.
        base_model=base_model if base_model and "/" in str(base_model) and not Path(base_model).exists() else None,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=(TEMPLATES / template).read_text(),
        model_name=Path(output_dir).resolve().name,
        base_model=base_model,
        **values,
    )
    card.save(Path(output_dir) / "README.md")
    return card
