"""What classification and instruction fine-tuning share: base models, LoRA and partial training."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from hf_scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification
from hf_scratch_gpt.loading import load_model as load_base
from hf_scratch_gpt.recipes.finetuning import FineTuningArguments, make_trainable
from hf_scratch_gpt.tokenization import train_tokenizer

from support import enable_checkpointing, tiny_config, tiny_gpt2


def tokenizer_of(size: int) -> PreTrainedTokenizerFast:
    """A character tokenizer of exactly `size` tokens."""
    tokenizer = train_tokenizer(["".join(chr(0x4E00 + i) for i in range(size - 2))], kind="char")
    assert len(tokenizer) == size
    return tokenizer


@pytest.fixture
def saved_causal_lm(tmp_path):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config())
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base", model


def args(**overrides) -> FineTuningArguments:
    return FineTuningArguments(model="unused", data="unused", **overrides)


def test_gpt2_base_gives_its_weights_to_the_body(tmp_path):
    gpt2 = tiny_gpt2()
    gpt2.save_pretrained(tmp_path / "gpt2")
    model = load_base(str(tmp_path / "gpt2"), ScratchGPTForSequenceClassification, tokenizer_of(101), num_labels=2,
                      id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    assert torch.equal(model.model.tok_emb.weight, gpt2.transformer.wte.weight)
    assert model.config.id2label == {0: "no", 1: "yes"} and model.score.out_features == 2
    causal = load_base(str(tmp_path / "gpt2"), ScratchGPTForCausalLM, tokenizer_of(101))
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(causal(ids).logits, gpt2(ids).logits, rtol=0, atol=1e-5)


def test_base_whose_vocabulary_is_smaller_than_the_tokenizer_is_refused(saved_causal_lm):
    path, _ = saved_causal_lm
    with pytest.raises(ValueError, match="has 120 tokens but the vocabulary of the model in .* holds 101"):
        load_base(str(path), ScratchGPTForCausalLM, tokenizer_of(120))


def test_last_block_mode_trains_only_the_last_block_norm_and_head(saved_causal_lm):
    path, _ = saved_causal_lm
    model = load_base(str(path), ScratchGPTForSequenceClassification, tokenizer_of(101), num_labels=2)
    model = make_trainable(model, args(mode="last_block"), "SEQ_CLS", head="score")
    trainable = {name.split(".")[1] if name.startswith("model.") else name.split(".")[0]
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"trf_blocks", "final_norm", "score"}
    assert all(not p.requires_grad for p in model.model.trf_blocks[0].parameters())
    assert all(p.requires_grad for p in model.model.trf_blocks[1].parameters())


def test_unknown_lora_target_lists_the_linear_layers(saved_causal_lm):
    path, _ = saved_causal_lm
    model = load_base(str(path), ScratchGPTForCausalLM, tokenizer_of(101))
    with pytest.raises(ValueError, match=r"\['q_proj'\] do not exist .* are \['fc_in', 'fc_out', 'out_proj', 'qkv'\]"):
        make_trainable(model, args(lora_target_modules=["qkv", "q_proj"]), "CAUSAL_LM", head="lm_head")


def test_lora_keeps_tied_embeddings_tied_through_training_and_merge(saved_causal_lm, tmp_path):
    path, _ = saved_causal_lm
    model = make_trainable(load_base(str(path), ScratchGPTForCausalLM, tokenizer_of(101)), args(),
                           "CAUSAL_LM", head="lm_head")
    base = model.get_base_model()
    assert base.lm_head.weight is base.model.tok_emb.weight
    assert not base.lm_head.weight.requires_grad  # LoRA trains adapters only
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    merged = model.merge_and_unload()
    assert merged.lm_head.weight is merged.model.tok_emb.weight
    merged.save_pretrained(tmp_path / "merged")
    reloaded = ScratchGPTForCausalLM.from_pretrained(tmp_path / "merged")
    assert reloaded.lm_head.weight is reloaded.model.tok_emb.weight


def test_gradient_checkpointing_with_lora_gives_the_same_gradients(saved_causal_lm):
    path, _ = saved_causal_lm
    ids = torch.randint(0, 100, (2, 12))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = make_trainable(load_base(str(path), ScratchGPTForCausalLM, tokenizer_of(101)),
                               args(lora_dropout=0.0), "CAUSAL_LM", head="lm_head")
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)  # non-zero B, so that lora_A gets gradients too
        model.train()
        if checkpointing:
            enable_checkpointing(model)
            assert model.get_base_model().model.trf_blocks[0].gradient_checkpointing
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 4 * 2
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)
