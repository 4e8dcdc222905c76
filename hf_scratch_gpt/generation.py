"""Generating from a saved model: greedy replies to many prompts at once (what the recipes score), and the
`generate` and `chat` commands."""

import sys
from dataclasses import dataclass, field

import torch

from .command import Command
from .data import instruction_messages


def generate_responses(model, tokenizer, records, max_new_tokens: int = 256, batch_size: int = 8) -> list[str]:
    """Greedy responses to `records` (dicts with instruction / input), prompted with the tokenizer's chat template."""
    return generate_replies(model, tokenizer, [instruction_messages(r, with_response=False) for r in records],
                            max_new_tokens, batch_size)


def room_left(model, prompt_length: int) -> int:
    """How many tokens the model's context holds after a prompt of `prompt_length` (no sliding window)."""
    return model.config.max_position_embeddings - prompt_length


def generate_replies(model, tokenizer, prompts, max_new_tokens: int = 256, batch_size: int = 8) -> list[str]:
    """Greedy replies to `prompts` (texts as they are, or conversations written with the tokenizer's chat
    template), stopped at end-of-text. Prompts of similar length are batched together (left-padded);
    `max_new_tokens` is capped by the room left in the context."""
    prompts = [p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
               for p in prompts]
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    too_long = [i for i, ids in enumerate(encoded) if room_left(model, len(ids)) <= 0]
    if too_long:
        raise ValueError(f"Prompt {too_long[0]} has {len(encoded[too_long[0]])} tokens, which leaves no room in the "
                         f"model's context of {model.config.max_position_embeddings}; shorten it.")
    responses = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(batch):
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                max_new_tokens=min(max_new_tokens, room_left(model, width)), do_sample=False,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        for row, i in enumerate(batch):
            responses[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return responses


@dataclass
class SamplingArguments:
    _argument_group_name = "generation"

    max_new_tokens: int = field(default=50, metadata={
        "help": "How many tokens to add at most (capped by the room left in the context)."})
    temperature: float = field(default=0.0, metadata={"help": "0 decodes greedily; above 0 samples."})
    top_k: int | None = field(default=None, metadata={"help": "Sample from the k most likely tokens only."})
    top_p: float | None = field(default=None, metadata={"help": "Sample from the smallest set with this mass."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max_new_tokens={self.max_new_tokens} is invalid: it must be positive.")
        if self.temperature < 0:
            raise ValueError(f"--temperature={self.temperature} is invalid: it must be >= 0.")


@dataclass
class GenerateArguments(SamplingArguments):
    prompt: str = field(default="Every effort moves you", metadata={"help": "Text to continue."})
    stream: bool = field(default=False, metadata={"help": "Print tokens as they are generated."})


@dataclass
class ChatArguments(SamplingArguments):
    max_new_tokens: int = field(default=256, metadata={"help": "Longest reply."})


def _load_for_generation(args: SamplingArguments, model_dir: str):
    """Load a saved causal LM (ours, or GPT-2's converted) and its tokenizer."""
    from transformers import set_seed
    from transformers.utils import logging

    from .loading import load_config, load_model, load_tokenizer
    from .modeling_scratch_gpt import ScratchGPTForCausalLM

    logging.disable_progress_bar()  # the reply is the output: no loading bars around it
    set_seed(args.seed)
    config = load_config(model_dir)  # a model of ours or GPT-2's, before its tokenizer is looked at
    tokenizer = load_tokenizer(model_dir, config=config)
    return tokenizer, load_model(model_dir, ScratchGPTForCausalLM, tokenizer, config=config).eval()


def _generate(model, tokenizer, args: SamplingArguments, inputs, streamer=None):
    """`model.generate` with the sampling flags, its reply capped by the room left in the context."""
    room = room_left(model, inputs["input_ids"].shape[1])
    if room <= 0:
        raise ValueError(f"The prompt has {inputs['input_ids'].shape[1]} tokens, which fills the model's context of "
                         f"{model.config.max_position_embeddings}; shorten it.")
    sampling = args.temperature > 0
    with torch.no_grad():
        return model.generate(
            **inputs,
            max_new_tokens=min(args.max_new_tokens, room),
            do_sample=sampling,
            temperature=args.temperature if sampling else None,
            top_k=args.top_k if sampling else None,
            top_p=args.top_p if sampling else None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            streamer=streamer,
        )


def generate_command(args: GenerateArguments, model_dir: str) -> None:
    """Continue a prompt with a saved model."""
    from transformers import TextStreamer

    tokenizer, model = _load_for_generation(args, model_dir)
    inputs = tokenizer(args.prompt, return_tensors="pt")
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("--prompt is empty; give some text to continue.")
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
    output = _generate(model, tokenizer, args, inputs, streamer)
    if streamer is None:
        print(tokenizer.decode(output[0], skip_special_tokens=True))


def chat_command(args: ChatArguments, model_dir: str) -> None:
    """Answer instructions read line by line from standard input, streaming each reply. Every line is a
    new conversation in the model's chat template (the models `instruct` trains saw one turn each)."""
    from transformers import TextStreamer

    tokenizer, model = _load_for_generation(args, model_dir)
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir} has no chat template; chat with a model trained by `hf-scratch-gpt instruct`, "
                         "or use `hf-scratch-gpt generate` to continue plain text.")
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type an instruction and press Enter; an empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line.strip():
            break
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": line.strip()}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        _generate(model, tokenizer, args, inputs, TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))


generate = Command(generate_command, (GenerateArguments,), (("model_dir", "Saved model folder."),))
chat = Command(chat_command, (ChatArguments,), (("model_dir", "Instruction model folder."),))
