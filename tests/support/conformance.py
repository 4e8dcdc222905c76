"""What `generate()` must give with the cache and without it, for each decoding mode and prompt shape.
Imports only torch, so that a process without our package (remote code) runs the same cases."""

import torch

MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.8, top_k=40, top_p=0.95),  # seeded below
    "beam search": dict(do_sample=False, num_beams=3, num_return_sequences=2),
    "repetition penalty": dict(do_sample=False, repetition_penalty=1.8),
}
PROMPTS = {  # rows of token ids; rows shorter than the longest are padded on the left
    "one token": [[7]],
    "one prompt": [[3, 14, 15, 92, 65]],
    "batch of two": [[3, 14, 15, 92, 65], [9, 26, 53, 58, 97]],
    "left-padded batch": [[3, 14, 15, 92, 65, 35], [26, 53], [58, 97, 93]],
}
NEW_TOKENS = 8


def left_padded(rows: list[list[int]], pad: int):
    """input_ids and attention_mask of rows padded on the left to a common length."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def generate_every_case(model, pad: int) -> dict[str, dict[str, list]]:
    """{"mode / prompt": {"cache": token ids, "no cache": token ids}}, each run from the same seed (the
    error instead of ids where generation fails)."""
    results = {}
    for prompt, rows in PROMPTS.items():
        ids, mask = left_padded(rows, pad)
        for mode, settings in MODES.items():
            case = results[f"{mode} / {prompt}"] = {}
            for use_cache, name in ((True, "cache"), (False, "no cache")):
                torch.manual_seed(0)
                try:
                    case[name] = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, pad_token_id=pad,
                                                use_cache=use_cache, **settings).tolist()
                except Exception as error:  # a failing case fails its own comparison, not every other one
                    case[name] = f"{type(error).__name__}: {error}"
    return results


@torch.no_grad()
def greedy_without_generate(model, rows: list[list[int]], eos: int) -> list:
    """Greedy decoding by hand: the whole sequence through the model for every new token, no cache; a row
    that has ended (end-of-text, also the padding) is padded, as `generate` does."""
    ids, mask = left_padded(rows, eos)
    ended = torch.zeros(len(rows), 1, dtype=torch.bool)
    for _ in range(NEW_TOKENS):
        next_ids = model(ids, attention_mask=mask, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        next_ids = next_ids.masked_fill(ended, eos)
        ended |= next_ids == eos
        ids, mask = torch.cat([ids, next_ids], 1), torch.cat([mask, torch.ones_like(next_ids)], 1)
    return ids.tolist()
