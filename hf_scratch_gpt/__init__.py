"""The GPT of "Build a Large Language Model (From Scratch)" as a first-class transformers model.

Importing the package registers the model with transformers' Auto classes; vLLM calls `register_with_vllm`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .book import from_book, to_book
from .configuration_scratch_gpt import ScratchGPTConfig
from .convert import from_gpt2, to_gpt2
from .modeling_scratch_gpt import (
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    ScratchGPTModel,
    ScratchGPTPreTrainedModel,
)

AutoConfig.register(ScratchGPTConfig.model_type, ScratchGPTConfig, exist_ok=True)
ScratchGPTConfig.register_for_auto_class()
for _auto, _model in (
    (AutoModel, ScratchGPTModel),
    (AutoModelForCausalLM, ScratchGPTForCausalLM),
    (AutoModelForSequenceClassification, ScratchGPTForSequenceClassification),
):
    _auto.register(ScratchGPTConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)



def register_with_vllm() -> None:
    """vLLM's plugin hook (the `vllm.general_plugins` entry point), run in each of its processes: our architecture is
    served by vLLM's Transformers backend with this package's model code, so that `trust_remote_code` stays off and
    a folder saved by any version of the package serves alike."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(
        "ScratchGPTForCausalLM", "vllm.model_executor.models.transformers:TransformersForCausalLM"
    )


__all__ = [
    "ScratchGPTConfig",
    "ScratchGPTPreTrainedModel",
    "ScratchGPTModel",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
    "from_gpt2",
    "to_gpt2",
    "from_book",
    "to_book",
]
