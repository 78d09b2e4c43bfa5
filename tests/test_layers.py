"""The package's layers, as the README's Architecture section draws them, checked from the source.

A module imports only from its own layer or the layers below it; within the taught core the
order is the lessons' (data and models, then training, distillation, pruning, measuring). No
module imports another module's private names, no function rebinds a module global, and no
module is over 400 lines.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distill_utils"

# (prefix, rank); the longest matching prefix wins. Equal ranks may import each other.
LAYERS = [
    ("common", 0),                                                          # floor: files, rules
    ("sparse", 1), ("data", 1), ("folders", 1), ("models", 1),              # taught core, in lesson order
    ("train", 2), ("distill", 3), ("prune", 4),
    ("measure", 5), ("plots", 5), ("widgets", 5),
    ("tasks", 6),                                                           # detection, transformers
    ("provenance", 7), ("deploy", 8), ("runs", 9), ("setup", 10), ("readme", 10),
    ("exercises", 10), ("challenge", 10),                                   # checks of learners' code, the challenge
    ("__main__", 11), ("__init__", 0),
]


def rank(module: str) -> int:
    """The layer of ``distill_utils.<module>`` (dotted, without the package name)."""
    matches = [(len(p), r) for p, r in LAYERS if module == p or module.startswith(p + ".")]
    assert matches, f"distill_utils.{module} is in no layer: add it to LAYERS (and to the README's Architecture)"
    return max(matches)[1]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def imports(tree):
    """(imported module without the package prefix, names) for every distill_utils import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distill_utils":
            target = node.module.partition(".")[2]
            for alias in node.names:  # `from distill_utils import data` imports the module data
                yield (target or alias.name), ("" if not target else alias.name)


def test_every_module_imports_only_its_own_layer_or_below():
    wrong = []
    for name, _, tree in modules():
        for target, _ in imports(tree):
            if target != "__version__" and rank(target) > rank(name):
                wrong.append(f"{name} (layer {rank(name)}) imports {target} (layer {rank(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_cross_modules():
    crossing = [f"{name} imports {target}.{imported}" for name, _, tree in modules()
                for target, imported in imports(tree)
                if imported.startswith("_") and imported != "__version__" and target != name]
    assert not crossing, "\n".join(crossing)


def test_no_function_rebinds_module_state_and_modules_stay_short():
    for _, path, tree in modules():
        rebinding = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Global)]
        assert not rebinding, f"{path.name}: `global` at lines {rebinding}; pass the value instead"
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines; split it by concept"
