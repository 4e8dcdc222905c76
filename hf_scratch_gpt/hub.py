"""What a run leaves for people and the Hub: the loss plot, the model card (rendered with huggingface_hub's
`ModelCard` from the `model_cards/` templates) and the push of a finished folder."""

import shutil
from importlib.resources import files
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

TEMPLATES = files("hf_scratch_gpt.model_cards")  # model_cards/ at the top of the repository
PACKAGE_URL = "https://pypi.org/project/hf-scratch-gpt/"
# Cards show this where the folder's path or Hub id goes; `push_to_hub` writes the repo id in its place.
REPO_PLACEHOLDER = "PATH_OR_REPO"
# What stays behind when a folder is pushed: checkpoints (Trainer's optimizer and RNG pickles) and hidden files.
PUSH_IGNORE = ["checkpoint-*", ".*", "*/.*", "training_args.bin"]
# Metrics that time the run rather than measure the model: kept out of cards.
_RUN_METRICS = ("runtime", "per_second", "preparation_time", "epoch")


def plot_losses(log_history: list[dict], path: Path, tokens_per_step: int | None = None) -> None:
    """Training and validation loss against steps, with tokens seen on a second axis when known (as the
    book plots pretraining); beside them, for preference tuning, the reward margin and accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = any("rewards/margins" in e or "eval_rewards/margins" in e for e in log_history)
    figure, axes = plt.subplots(1, 2 if rewards else 1, figsize=(12 if rewards else 6, 4), squeeze=False)
    axis = axes[0, 0]
    _plot_series(axis, log_history, {"loss": "Training loss", "eval_loss": "Validation loss"}, "Loss")
    if tokens_per_step:
        tokens_axis = axis.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
        tokens_axis.set_xlabel("Tokens seen")
    if rewards:
        _plot_series(axes[0, 1], log_history, {"rewards/margins": "Training reward margin",
                                               "eval_rewards/margins": "Validation reward margin",
                                               "eval_rewards/accuracies": "Validation reward accuracy"}, "Reward")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_series(axis, log_history: list[dict], series: dict, ylabel: str) -> None:
    """One line per logged value in `series` (key: label) against steps: training solid, validation dash-dotted.
    A test evaluation is left out (TRL logs its rewards under `eval_` names)."""
    for key, label in series.items():
        points = [(e["step"], e[key]) for e in log_history if key in e and "test_loss" not in e]
        if points:
            axis.plot(*zip(*points), "-." if key.startswith("eval_") else "-", label=label,
                      marker="o" if len(points) < 3 else None)
    axis.set_xlabel("Steps")
    axis.set_ylabel(ylabel)
    axis.legend(loc="upper right")


# ---------------------------------------------------------------------------------------------- model cards


def write_pretraining_card(output_dir: Path, *, model_name, model, data, dataset_sizes, max_length, stride,
                           training_args, metrics, tokens_seen, wall_seconds, streamed=False) -> ModelCard:
    """Write `README.md` for a pretrained model: shape, data, hyper-parameters, results, how to load."""
    hyperparameters = {"steps": training_args.max_steps, "tokens seen": f"{tokens_seen:,}",
                       **_optimisation(training_args, wall_seconds)}
    return _write_card(
        output_dir, "pretrain.md", "text-generation", model=model, model_name=model_name, data=data,
        metrics=metrics, hyperparameters=hyperparameters, dataset_sizes=dataset_sizes, max_length=max_length,
        stride=stride, streamed=streamed,
    )


def write_classification_card(output_dir: Path, *, model_name, base_model, model, data, mode, dataset_sizes,
                              label_names, training_args, metrics, confusion, wall_seconds) -> ModelCard:
    """Write `README.md` for a fine-tuned classifier: base model, data, training, test results with
    the confusion matrix, how to load."""
    return _write_card(
        output_dir, "classify.md", "text-classification", model=model, model_name=model_name, data=data,
        metrics=metrics, base_model=base_model, mode=mode,
        hyperparameters=_fine_tuning(training_args, mode, wall_seconds),
        dataset_sizes=dataset_sizes, label_names=label_names,
        confusion=confusion.tolist() if confusion is not None else None,
    )


def write_instruction_card(output_dir: Path, *, model_name, base_model, model, data, mode, mask_prompt, packing,
                           dataset_sizes, training_args, metrics, examples, wall_seconds) -> ModelCard:
    """Write `README.md` for an instruction-following model: base model, data, prompt format,
    training, test results with a few responses, how to chat with it."""
    return _write_card(
        output_dir, "instruct.md", "text-generation", model=model, model_name=model_name, data=data,
        metrics=metrics, base_model=base_model, mode=mode,
        hyperparameters=_fine_tuning(training_args, mode, wall_seconds),
        mask_prompt=mask_prompt, packing=packing, dataset_sizes=dataset_sizes, examples=examples,
    )


def write_preference_card(output_dir: Path, *, model_name, base_model, model, data, mode, dataset_sizes,
                          training_args, metrics, examples, wall_seconds) -> ModelCard:
    """Write `README.md` for a preference-tuned model: base model, pairs, DPO settings, rewards and loss before
    and after, a few test responses, how to chat with it."""
    hyperparameters = {"beta": training_args.beta, "loss": ", ".join(training_args.loss_type),
                       "reference": "the base (adapter switched off)" if mode == "lora" else "a frozen copy of the base",
                       "pairs cut to (tokens)": training_args.max_length,
                       **_fine_tuning(training_args, mode, wall_seconds)}
    return _write_card(
        output_dir, "dpo.md", "text-generation", model=model, model_name=model_name, data=data, metrics=metrics,
        base_model=base_model, mode=mode, hyperparameters=hyperparameters, dataset_sizes=dataset_sizes,
        examples=examples, tags=("trl", "dpo"),
    )


def write_conversion_card(output_dir: Path, *, model_name, source, scratch_model, target_type) -> ModelCard:
    """Write `README.md` for a converted checkpoint: where it came from, the architecture, how exact the
    conversion is and how to load it."""
    return _write_card(output_dir, "convert.md", "text-generation", model=scratch_model, model_name=model_name,
                       base_model=source, target_type=target_type, custom_code=target_type == "scratch_gpt")


def write_book_card(output_dir: Path, *, model_name, source, model, lora_alpha=None) -> ModelCard:
    """Write `README.md` for a checkpoint of the book's code: where it came from, the architecture, how to load
    it and take it back; with LoRA, the same card (PEFT metadata) for its `adapter/` folder."""
    from .book import book_config
    from .modeling_scratch_gpt import ScratchGPTForSequenceClassification

    classifier = isinstance(model, ScratchGPTForSequenceClassification)
    pipeline = "text-classification" if classifier else "text-generation"
    card = _write_card(output_dir, "book.md", pipeline, model=model, model_name=model_name, base_model=source,
                       pipeline=pipeline, lora_alpha=lora_alpha, book_config=book_config(model.config),
                       auto_class="AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM")
    if lora_alpha:
        adapter_card = ModelCard(str(card))
        adapter_card.data.library_name = "peft"
        adapter_card.save(Path(output_dir) / "adapter" / "README.md")
    return card


def write_adapter_card(adapter_dir: Path, card: ModelCard, base_model: str) -> ModelCard:
    """The fine-tuned model's card and loss plot, for its LoRA adapter folder: PEFT metadata, and how
    to put the adapter on its base model (PEFT's own card would be an empty form)."""
    adapter_card = ModelCard(str(card))
    adapter_card.data.library_name = "peft"
    adapter_card.text = (
        f"\n*This folder is the LoRA adapter of the model below, for the base model `{base_model}`: "
        f"`PeftModel.from_pretrained(AutoModelFor...from_pretrained(\"{base_model}\"), \"{REPO_PLACEHOLDER}\", "
        "subfolder=\"adapter\")`. The parent folder holds the same model with the adapter merged in.*\n"
        + adapter_card.text
    )
    adapter_card.save(Path(adapter_dir) / "README.md")
    shutil.copyfile(Path(adapter_dir).parent / "loss.png", Path(adapter_dir) / "loss.png")
    return adapter_card


def _write_card(output_dir: Path, template: str, pipeline_tag: str, *, model, model_name, data=None,
                metrics=None, hyperparameters=None, base_model=None, mode=None, custom_code=True, tags=(),
                **values) -> ModelCard:
    """Render a `model_cards/` template under the metadata every card of ours carries: library, task, tags,
    license, base model, data sets and a model-index of the metrics measured."""
    dataset = _dataset_id(data) if data else None
    metrics = {key: value for key, value in (metrics or {}).items() if not key.endswith(_RUN_METRICS)}
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["scratch_gpt", *(["custom_code"] if custom_code else []), pipeline_tag,
              *(["lora", "peft"] if mode == "lora" else []), *tags],
        license="apache-2.0",
        base_model=_hub_id(base_model),
        datasets=[dataset] if dataset else None,
        eval_results=_eval_results(metrics, pipeline_tag, dataset) or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=(TEMPLATES / template).read_text(),
        model_name=model_name,
        repo=REPO_PLACEHOLDER,
        package_url=PACKAGE_URL,
        base_model=base_model,
        data=data,
        mode=mode,
        config=model.config,
        architecture=_table(_architecture(model)),
        results=_table(metrics, "metric", "{:.4f}") if metrics else None,
        hyperparameters=_table(hyperparameters) if hyperparameters else None,
        **values,
    )
    card.save(Path(output_dir) / "README.md")
    return card


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


def _optimisation(training_args, wall_seconds) -> dict:
    args = training_args.to_dict()  # enums as their values
    return {
        "batch size (per device)": args["per_device_train_batch_size"],
        "gradient accumulation": args["gradient_accumulation_steps"],
        "processes": training_args.world_size,
        "global batch size": args["per_device_train_batch_size"] * args["gradient_accumulation_steps"]
                             * training_args.world_size,
        "learning rate": f"{args['learning_rate']} ({args['lr_scheduler_type']}, warmup {args['warmup_steps']})",
        "optimizer": f"{args['optim']} (betas {args['adam_beta1']}, {args['adam_beta2']}; "
                     f"weight decay {args['weight_decay']})",
        "gradient clipping": args["max_grad_norm"],
        "precision": "bf16 autocast, fp32 weights" if args["bf16"] else "fp16 autocast" if args["fp16"] else "fp32",
        "seed": args["seed"],
        "wall time": f"{wall_seconds:.0f} s",
    }


def _fine_tuning(args, mode, wall_seconds) -> dict:
    return {"what trained": mode, "epochs": args.num_train_epochs, **_optimisation(args, wall_seconds)}


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


# --------------------------------------------------------------------------------------------------- push


def hub_login(repo_id: str, token: str | None = None) -> tuple[HfApi, str]:
    """Check that a push to `repo_id` can start (offline mode off, a token the Hub accepts, a valid id)
    and return the API client and the full repo id (a bare name goes under the token's user).
    Recipes call this before training, so a missing token costs seconds, not the run."""
    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it to push to the Hub.")
    token = token or get_token()
    if not token:
        raise ValueError("No Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --hub_token.")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except Exception as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            raise ValueError(f"The Hub at {api.endpoint} rejected the token; log in again (`hf auth login`) "
                             "or set a valid HF_TOKEN.") from error
        raise ValueError(f"Cannot reach the Hub at {api.endpoint} ({_summary(error)}); check the network or "
                         "HF_ENDPOINT.") from error
    repo_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({error}).") from error
    return api, repo_id


def push_to_hub(folder, repo_id: str, *, token: str | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None) -> str:
    """Upload a finished output folder to a model repo in a single commit and return the commit's URL.

    Checkpoints and hidden files stay behind; the cards' placeholder becomes the repo id, so their
    loading snippets run as written. A repo this call created is deleted again if the upload fails.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ValueError(f"{folder} holds no config.json or adapter_config.json; push a folder this package "
                         "(or save_pretrained) wrote.")
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    paths = list(filter_repo_objects(paths, ignore_patterns=PUSH_IGNORE))
    api, repo_id = hub_login(repo_id, token)
    operations = [CommitOperationAdd(path, _with_repo_id(folder / path, repo_id)) for path in paths]
    created = not api.repo_exists(repo_id)
    api.create_repo(repo_id, private=private, exist_ok=True)
    committed = False
    try:
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(repo_id, operations, revision=revision,
                                   commit_message=commit_message or f"Upload {folder.resolve().name} with hf-scratch-gpt")
        committed = True
    except Exception as error:
        raise ValueError(f"Uploading {folder} to {repo_id} failed, nothing was committed"
                         f"{' and the new repo was deleted' if created else ''}: {_summary(error)}") from error
    finally:
        if created and not committed:
            api.delete_repo(repo_id, missing_ok=True)
    return commit.commit_url


def _summary(error: Exception) -> str:
    """An error of huggingface_hub on one line, without its pointer to HTTP status documentation."""
    lines = [line.strip(" -") for line in str(error).splitlines() if line.strip() and "For more information" not in line]
    return " ".join(lines) or type(error).__name__


def _with_repo_id(path: Path, repo_id: str):
    """The file's bytes, with the placeholder in model cards replaced by the repo id; other files by path."""
    if path.name != "README.md":
        return str(path)
    return path.read_text(encoding="utf-8").replace(REPO_PLACEHOLDER, repo_id).encode("utf-8")
