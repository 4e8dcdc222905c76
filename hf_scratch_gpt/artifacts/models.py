"""A trained model's folder: the model and its tokenizer; for a PEFT model also its adapter (and, on request, the
weights the adapter goes on), the folder itself holding the adapter merged in."""

import copy
from pathlib import Path


def is_peft(model) -> bool:
    """Whether `model` is a PEFT model (LoRA adapters on a base model)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_model(model, tokenizer, folder: Path, with_base: bool = False):
    """Write `model` and `tokenizer` into `folder`. A PEFT model also goes to `folder/adapter` as its adapter,
    with `with_base` to `folder/base` as the weights the adapter goes on, each with the tokenizer; `folder` then
    holds the merged model. Returns the model as `folder` holds it."""
    folders = [folder]
    if is_peft(model):
        model.save_pretrained(folder / "adapter")
        folders.append(folder / "adapter")
        if with_base:
            copy.deepcopy(model).unload().save_pretrained(folder / "base")
            folders.append(folder / "base")
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    for each in folders:
        tokenizer.save_pretrained(each)
    return model
