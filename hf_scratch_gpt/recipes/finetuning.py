"""What the fine-tuning recipes share: their arguments, and what trains (PEFT LoRA, everything, or the book's
last blocks)."""

from dataclasses import dataclass, field
from typing import Literal

import torch

LORA_TARGETS = ["qkv", "out_proj", "fc_in", "fc_out"]  # every linear layer of every block


@dataclass
class FineTuningArguments:
    """The base model, the data and what is trained."""

    _argument_group_name = "model and data"

    model: str = field(metadata={"help": "A model this package saved, or a GPT-2 folder or Hub id."})
    data: str = field(metadata={"help": "A data file, folder or glob, or a Hub dataset."})
    max_length: int | None = field(default=None, metadata={"help": "Cut examples to this many tokens "
                                                                    "(default: the model's context length)."})
    split_seed: int | None = field(default=123, metadata={"help": "Seed of the shuffle before splitting."})
    mode: Literal["lora", "full", "last_block", "last_two_blocks"] = field(
        default="lora", metadata={"help": "What trains: LoRA adapters, everything, or the last block(s) with "
                                          "the final norm and the head."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS),
                                           metadata={"help": "Linear layers that get adapters."})

    def __post_init__(self):
        """Refuse bad LoRA settings before any data or model is loaded."""
        if self.mode != "lora":
            return
        if self.lora_r <= 0:
            raise ValueError(f"--lora_r={self.lora_r} is invalid: the LoRA rank must be a positive integer.")
        if self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha={self.lora_alpha} is invalid: the LoRA scale alpha / r must be positive.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout={self.lora_dropout} is invalid: it must be in [0, 1).")


def context_max_length(max_length: int | None, config) -> int:
    """`max_length`, defaulting to and bounded by the context length of `config` (ours or GPT-2's)."""
    context = config.max_position_embeddings
    max_length = context if max_length is None else max_length  # 0 is refused, not the default
    if max_length <= 0 or max_length > context:
        raise ValueError(f"--max_length={max_length} is invalid: it must be between 1 and the model's context "
                         f"length {context}.")
    return max_length


def make_trainable(model, args: FineTuningArguments, task_type: str, head: str):
    """LoRA adapters through PEFT (a new `head` trains in full), everything, or the book's last
    block(s) + final norm + `head`. A tied output head stays tied: LoRA never touches it."""
    if args.mode == "lora":
        from peft import get_peft_model

        return get_peft_model(model, lora_config(model, args, task_type, head))
    if args.mode != "full":
        blocks = 1 if args.mode == "last_block" else 2
        model.requires_grad_(False)
        for module in (*model.model.trf_blocks[-blocks:], model.model.final_norm, getattr(model, head)):
            module.requires_grad_(True)
    return model


def lora_config(model, args: FineTuningArguments, task_type: str, head: str):
    """PEFT's `LoraConfig` for `args`, its target modules checked against the linear layers of `model` other
    than `head`."""
    from peft import LoraConfig

    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear)} - {head})
    unknown = [name for name in args.lora_target_modules if name not in linear]
    if unknown:
        raise ValueError(f"LoRA target module(s) {unknown} do not exist in the model; its linear layers are {linear}.")
    return LoraConfig(task_type=task_type, r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(args.lora_target_modules),
                      modules_to_save=[head] if task_type == "SEQ_CLS" else None)


def check_whole_weights(trainer) -> None:
    """The fine-tuned model is saved (and LoRA merged into it) by process 0 from its own copy of the weights,
    which FSDP and DeepSpeed ZeRO-3 would have sharded away: refuse them before training, not after."""
    deepspeed = trainer.accelerator.state.deepspeed_plugin
    if trainer.is_fsdp_enabled or (deepspeed is not None and deepspeed.zero_stage == 3):
        raise ValueError("The fine-tuning recipes run with DDP or DeepSpeed ZeRO-1/2 (LoRA and the book's last "
                         "blocks train a few MB: sharding them buys nothing); launch without FSDP / ZeRO-3.")
