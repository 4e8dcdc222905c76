"""The Auto classes load our folders, with the package installed and, through remote code, without it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from hf_scratch_gpt import (
    ScratchGPTConfig,
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    ScratchGPTModel,
)

from support import tiny_config

AUTO_MAP = {
    "AutoConfig": "configuration_scratch_gpt.ScratchGPTConfig",
    "AutoModel": "modeling_scratch_gpt.ScratchGPTModel",
    "AutoModelForCausalLM": "modeling_scratch_gpt.ScratchGPTForCausalLM",
    "AutoModelForSequenceClassification": "modeling_scratch_gpt.ScratchGPTForSequenceClassification",
}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = ScratchGPTForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_save_writes_safetensors_config_with_every_auto_class_and_code(saved):
    model, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["architectures"] == ["ScratchGPTForCausalLM"]
    assert all((folder / f"{name}_scratch_gpt.py").is_file() for name in ("configuration", "modeling", "kernels"))
    assert not list(folder.glob("*.bin"))
    tensors = load_file(folder / "model.safetensors")
    assert "out_head.weight" not in tensors  # the tied copy is not written
    torch.testing.assert_close(tensors["model.tok_emb.weight"], model.model.tok_emb.weight)


def test_auto_classes_load_with_package_installed(saved):
    model, folder = saved
    ids = torch.tensor([[1, 2, 3, 4]])
    assert isinstance(AutoConfig.from_pretrained(folder), ScratchGPTConfig)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert type(loaded) is ScratchGPTForCausalLM
    assert loaded.lm_head.weight is loaded.model.tok_emb.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    base = AutoModel.from_pretrained(folder)
    assert type(base) is ScratchGPTModel
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    assert type(classifier) is ScratchGPTForSequenceClassification
    torch.testing.assert_close(classifier.model.tok_emb.weight, model.model.tok_emb.weight)
    bf16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert bf16.model.tok_emb.weight.dtype == torch.bfloat16


def test_auto_classes_build_from_config():
    config = tiny_config()
    assert type(AutoModelForCausalLM.from_config(config)) is ScratchGPTForCausalLM
    assert type(AutoModel.from_config(config)) is ScratchGPTModel


def test_classifier_round_trip_keeps_labels(tmp_path):
    config = tiny_config(id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1})
    model = ScratchGPTForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"] == AUTO_MAP
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.id2label == {0: "ham", 1: "spam"}
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["hf_scratch_gpt"] = None  # this process cannot import the package
    try:
        import hf_scratch_gpt
    except ImportError:
        pass
    else:
        raise SystemExit("hf_scratch_gpt is importable: the test proves nothing")
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
    folder = sys.argv[1]
    lm = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert not type(lm).__module__.startswith("hf_scratch_gpt"), type(lm).__module__
    with torch.no_grad():
        print(repr(lm(torch.tensor([[1, 2, 3, 4]])).logits.sum().item()))
    print(type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__)
    print(type(AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)).__name__)
    out = lm.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    print(out[0].tolist())
    """
)


def test_remote_code_loads_where_the_package_is_not_installed(saved, tmp_path_factory):
    model, folder = saved
    workdir = tmp_path_factory.mktemp("elsewhere")
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workdir / "modules"), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder)], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    logits_sum, base_name, classifier_name, generated = result.stdout.strip().splitlines()[-4:]
    with torch.no_grad():
        assert float(logits_sum) == pytest.approx(model(torch.tensor([[1, 2, 3, 4]])).logits.sum().item(), abs=1e-3)
    assert (base_name, classifier_name) == ("ScratchGPTModel", "ScratchGPTForSequenceClassification")
    expected = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)[0].tolist()
    assert generated == str(expected)


def test_code_files_import_nothing_from_the_package():
    import hf_scratch_gpt

    package = Path(hf_scratch_gpt.__file__).parent
    for name in ("configuration_scratch_gpt.py", "modeling_scratch_gpt.py", "kernels_scratch_gpt.py"):
        source = (package / name).read_text()
        imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        for line in imports:
            module = line.split()[1]
            top = module.split(".")[0]
            assert top in ("torch", "transformers", "huggingface_hub") or top in sys.stdlib_module_names or module in (
                ".configuration_scratch_gpt", ".kernels_scratch_gpt",
            ), line


def test_device_map_auto_loads_the_model_whole(run_folders):
    """`device_map="auto"` (accelerate's big-model loading) keeps each block on one device and gives the
    same logits."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(run_folders["pretrain"]).eval()
    mapped = AutoModelForCausalLM.from_pretrained(run_folders["pretrain"], device_map="auto").eval()
    ids = torch.arange(1, 9).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(mapped(ids).logits, reference(ids).logits)
    assert set(mapped._no_split_modules) == {"TransformerBlock"}
