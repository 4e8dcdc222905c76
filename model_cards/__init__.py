"""The model card templates every run fills in; installed as the package `hf_scratch_gpt.model_cards`
(pyproject.toml maps this folder there), so `importlib.resources` finds them in any install."""
