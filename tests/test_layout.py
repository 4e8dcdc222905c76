"""The package's imports point one way: the model, then data and tokenizers, then the files the package writes
(`artifacts/`), then conversions and loading, then the recipes, then the command line. Every import is read from
the source, those inside functions too, so an arrow the wrong way fails here."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_scratch_gpt"
LAYERS = [  # lowest first; a module may import its own layer and those below
    {"configuration_scratch_gpt", "modeling_scratch_gpt", "kernels_scratch_gpt", "command"},
    {"tokenization", "corpus", "data", "evaluation"},
    {"artifacts"},
    {"convert", "book", "export", "loading", "generation", "__init__"},
    {"recipes"},
    {"cli"},
]
REMOTE_CODE = {"configuration_scratch_gpt", "modeling_scratch_gpt", "kernels_scratch_gpt"}


def layer(module: str) -> int:
    """The layer of a module, named by its path under the package (`recipes.runs` is in `recipes`)."""
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def internal_imports(path: Path) -> set[str]:
    """The package's modules `path` imports, as paths under the package (`artifacts.cards`)."""
    module = path.relative_to(PACKAGE).with_suffix("").parts
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [[*target, alias.name] for alias in node.names] if not node.module else [target]
            found.update(".".join(n) for n in names if n)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_scratch_gpt"):
            found.add(node.module.removeprefix("hf_scratch_gpt").strip(".") or "__init__")
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("hf_scratch_gpt.") for alias in node.names
                         if alias.name.startswith("hf_scratch_gpt"))
    return {name or "__init__" for name in found}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer(module)
    upward = {name for name in internal_imports(path) if layer(name) > own}
    assert not upward, f"{module} (layer {own}) imports {upward}, drawn above it"


@pytest.mark.parametrize("name", sorted(REMOTE_CODE))
def test_remote_code_imports_only_torch_transformers_and_itself(name):
    """These files travel with every checkpoint: a user without this package runs them."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.module in REMOTE_CODE, f"{name} imports .{node.module}"
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for imported in names:
                assert imported.split(".")[0] in {"torch", "transformers", "huggingface_hub", "math", "inspect",
                                                  "warnings", "time", "re", "difflib", "contextvars"}, imported


def test_every_module_is_in_a_layer():
    for path in MODULES:
        layer(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
