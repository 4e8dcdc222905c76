"""The model on every transformers it supports. transformers 5.24 renamed the cache from `past_key_values`
to `cache`; a model that reads one name loses its cache on the other side of the change and silently
generates other tokens. So: `generate()` with the cache equals a reference without any cache, for every
decoding mode and prompt shape, in this process, through remote code where the package is not installed,
and on a release that has removed the old name. Also: the lower bounds we declare are the ones CI tests,
and an older transformers gets one clear error."""

import inspect
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import tomllib
import torch
from transformers import DynamicCache, GenerationMixin

from hf_scratch_gpt import modeling_scratch_gpt
from hf_scratch_gpt.configuration_scratch_gpt import MINIMUM_TRANSFORMERS
from hf_scratch_gpt.modeling_scratch_gpt import CACHE_NAME

from support import VOCAB
from support.conformance import MODES, PROMPTS, generate_every_case, greedy_without_generate
from support.removed_cache_alias import remove_past_key_values

ROOT = Path(__file__).parents[2]
HELPERS = Path(__file__).parents[1] / "support"  # imported as they are, without this package
EOS = VOCAB - 1
NAME_GENERATE_PASSES = (
    "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)
NEEDS_THE_RENAME = pytest.mark.skipif(CACHE_NAME != "cache", reason="this transformers predates the `cache` name")


@pytest.fixture(scope="module")
def every_case(model_for_module):
    return generate_every_case(model_for_module, pad=EOS)


@pytest.fixture(scope="module")
def model_for_module():
    from hf_scratch_gpt import from_gpt2

    from support import tiny_gpt2

    return from_gpt2(tiny_gpt2()).eval()


@pytest.mark.parametrize("case", [f"{mode} / {prompt}" for prompt in PROMPTS for mode in MODES])
def test_generate_with_the_cache_equals_generate_without(every_case, case):
    assert every_case[case]["cache"] == every_case[case]["no cache"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generate_equals_greedy_decoding_by_hand(model_for_module, every_case, prompt):
    expected = greedy_without_generate(model_for_module, PROMPTS[prompt], eos=EOS)
    assert every_case[f"greedy / {prompt}"]["cache"] == expected


def test_the_cache_goes_by_the_name_generate_uses_and_is_read_by_either(model_for_module):
    model = model_for_module
    assert CACHE_NAME == NAME_GENERATE_PASSES
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 26, 53]])
    with torch.no_grad():
        whole = model(ids, use_cache=False).logits
        for name in ("cache", "past_key_values"):
            first = model(ids[:, :5], use_cache=True)
            cache = getattr(first, CACHE_NAME)
            assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 5
            rest = model(ids[:, 5:], use_cache=True, **{name: cache})
            assert getattr(rest, CACHE_NAME).get_seq_length() == 8
            torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), whole)
        with pytest.raises(ValueError, match="Pass the cache once"):
            model(ids[:, 5:], cache=DynamicCache(), past_key_values=DynamicCache())


@pytest.mark.parametrize("head", ["causal_lm", "classifier", "base"])
def test_the_old_cache_name_warns_once_where_transformers_renamed_it(model_for_module, head):
    """From 5.24 transformers' own models answer `past_key_values=` with a FutureWarning; before, it is the name."""
    from hf_scratch_gpt import ScratchGPTForSequenceClassification

    model = {"causal_lm": model_for_module, "base": model_for_module.model,
             "classifier": ScratchGPTForSequenceClassification(model_for_module.config).eval()}[head]
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 26, 53]])
    with torch.no_grad():
        cache = getattr(model(ids[:, :5], use_cache=True), CACHE_NAME)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rest = model(ids[:, 5:], use_cache=True, past_key_values=cache)
    deprecations = [w for w in caught
                    if w.category is FutureWarning and "`past_key_values` is deprecated" in str(w.message)]
    assert len(deprecations) == (1 if CACHE_NAME == "cache" else 0)
    assert getattr(rest, CACHE_NAME).get_seq_length() == 8  # and the cache was read


@NEEDS_THE_RENAME
def test_generation_is_unchanged_where_past_key_values_was_removed(model_for_module, every_case, monkeypatch):
    remove_past_key_values(monkeypatch.setattr, modeling_scratch_gpt)
    assert generate_every_case(model_for_module, pad=EOS) == every_case
    labels = torch.tensor([[3, 14, 15, 92, 65]])
    model_for_module.train()
    try:  # training too: the loss path builds no cache, and names none
        assert model_for_module(labels, labels=labels).loss > 0
    finally:
        model_for_module.eval()


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_scratch_gpt"] = None  # this process cannot import the package
    sys.path.insert(0, sys.argv[2])  # the tests' helpers, which import only torch and transformers
    from transformers import AutoModelForCausalLM
    from conformance import generate_every_case
    from removed_cache_alias import remove_past_key_values

    if sys.argv[3] == "removed":
        remove_past_key_values()
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("hf_scratch_gpt"), type(model).__module__
    print(json.dumps(generate_every_case(model, pad=int(sys.argv[4]))))
    """
)


@pytest.mark.parametrize("transformers_api", ["installed", pytest.param("removed", marks=NEEDS_THE_RENAME)])
def test_remote_code_generates_every_case_as_the_package_does(model_for_module, every_case, tmp_path,
                                                              transformers_api):
    model_for_module.save_pretrained(tmp_path / "model")
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "model"), str(HELPERS), transformers_api, str(EOS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == every_case


OLD_TRANSFORMERS = textwrap.dedent(
    """
    import importlib.util, sys
    fake = sys.argv[2] + "/transformers"
    spec = importlib.util.spec_from_file_location("transformers", fake + "/__init__.py")
    sys.modules["transformers"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    spec = importlib.util.spec_from_file_location("configuration_scratch_gpt", sys.argv[1])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    """
)


def test_an_older_transformers_gets_one_clear_error(tmp_path):
    """transformers 4.x loading one of our checkpoints: the config file (the first to run) names the minimum."""
    fake = tmp_path / "fake" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "4.57.6"\n')
    config_file = Path(modeling_scratch_gpt.__file__).with_name("configuration_scratch_gpt.py")
    result = subprocess.run([sys.executable, "-c", OLD_TRANSFORMERS, str(config_file), str(tmp_path / "fake")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (f"ImportError: This ScratchGPT model needs transformers >= {MINIMUM_TRANSFORMERS}, and this "
                         f"Python has 4.57.6: pip install --upgrade 'transformers>={MINIMUM_TRANSFORMERS}'")


def test_forward_on_an_accelerator_never_waits_for_the_device(model_for_module):
    """Reading a value back from an accelerator stalls every decoded token; a tensor on the meta device
    cannot be read back at all, so a forward (prompt, then a cached step) there proves none is read."""
    from hf_scratch_gpt import ScratchGPTForCausalLM

    with torch.device("meta"):
        model = ScratchGPTForCausalLM(model_for_module.config).eval()
    ids = torch.ones(2, 5, dtype=torch.long, device="meta")
    with torch.no_grad():
        first = model(ids, use_cache=True)
        step = model(ids[:, :1], position_ids=torch.full((2, 1), 5, device="meta"), use_cache=True,
                     **{CACHE_NAME: getattr(first, CACHE_NAME)})
    assert step.logits.shape == (2, 1, VOCAB)


def _lower_bounds(requirements: list[str]) -> dict[str, str]:
    bounds = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)(,.*)?", requirement.split(";")[0].strip())
        assert match, f"{requirement!r} declares no lower bound"
        bounds[match[1].lower().replace("_", "-")] = match[2]
    return bounds


def test_declared_lower_bounds_are_the_versions_ci_tests():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _lower_bounds(project["dependencies"] + project["optional-dependencies"]["dev"])
    pins = dict(line.split("==") for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    def normalise(version):
        return tuple(int(n) for n in version.split(".")) + (0,) * (3 - len(version.split(".")))
    declared.pop("torch")  # CI installs the local CPU wheel (2.13.0) at both ends
    assert {n: normalise(v) for n, v in declared.items()} == {n: normalise(v) for n, v in pins.items()}
    assert normalise(MINIMUM_TRANSFORMERS) == normalise(declared["transformers"])
