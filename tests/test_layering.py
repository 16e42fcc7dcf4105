"""The house rules of ARCHITECTURE.md ("House rules"), checked by reading the source (AST), not by importing it.

1. Layers: core -> lm -> the stage packages (data, train, finetune, eval, serve, export) -> sessions, benchmarks ->
   scripts.
   A module imports its own package and the layers below, never a sibling at its own layer or anything above.
2. No module imports another module's `_private` name, nor reaches for a `_private` attribute defined elsewhere in
   the library (`loop._train_step` from a benchmark).
3. No module is longer than MAX_MODULE_LINES.
4. `__init__.py` holds a docstring only, so importing a package imports nothing heavy (torch least of all).
5. ARCHITECTURE.md's package table lists every package with its layer and exactly its modules.

    .venv/bin/python -m pytest tests/test_layering.py -q
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The source tree is read, not imported, so the rules can be checked on any tree (the old flat one included).
REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY = REPO_ROOT / "utils"
SCRIPTS = REPO_ROOT / "scripts"
LAYERS = {"core": 0, "lm": 1, "data": 2, "train": 2, "finetune": 2, "eval": 2, "serve": 2, "export": 2,
          "sessions": 3, "benchmarks": 3}
SCRIPT_LAYER = 4
# The sibling imports the rules allow: pretraining scores HellaSwag every eval_interval with stage 05's loader, so
# the numbers it logs are the ones stage 05 reports (loader and scoring stay one implementation); the recipe
# benchmark is the shipped experiments run on mirror data, so it runs them with the experiment runner and reports
# their rows rather than a copy of it.
ALLOWED_SIBLING_IMPORTS = {("utils.train.pretrain", "utils.eval.tasks"),
                           ("utils.benchmarks.recipe", "utils.sessions.experiment"),
                           ("utils.benchmarks.recipe", "utils.sessions.experiment_report")}
MAX_MODULE_LINES = 600
HEAVY_MODULES = ("torch", "transformers", "datasets", "fastapi")


@dataclass(frozen=True)
class Module:
    path: Path
    name: str  # dotted: utils.train.loop, scripts.02_pretrain
    tree: ast.Module

    @property
    def package(self) -> str | None:
        """The layer package (`train` for utils.train.loop); None for a module outside any package."""
        parts = self.name.split(".")
        return parts[1] if parts[0] == "utils" and len(parts) > 2 else None

    @property
    def layer(self) -> int | None:
        if self.name.startswith("scripts."):
            return SCRIPT_LAYER
        return LAYERS.get(self.package) if self.package else None


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_modules(roots: tuple[Path, ...] = (LIBRARY, SCRIPTS)) -> list[Module]:
    return [Module(p, _dotted(p), ast.parse(p.read_text(encoding="utf-8"), str(p)))
            for root in roots for p in sorted(root.rglob("*.py"))]


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")[: -node.level] if module.path.name != "__init__.py" else \
        module.name.split(".")[: len(module.name.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: Module) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import of the library, at any depth."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "utils"]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] != "utils":
                continue
            names = [a.name for a in node.names]
            if (REPO_ROOT / target.replace(".", "/")).is_dir():  # from utils.sessions import plans: modules
                found += [(node.lineno, f"{target}.{n}", []) for n in names]
            else:
                found.append((node.lineno, target, names))
    return found


def _package_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 2 else None


def layer_violations(modules: list[Module]) -> list[str]:
    problems = []
    for module in modules:
        if module.name.startswith("utils.") and module.path.name != "__init__.py" and module.package is None:
            problems.append(f"{module.name}: lies directly in utils/, outside every layer package "
                            f"({', '.join(LAYERS)})")
            continue
        for line, target, _ in imports(module):
            problems += _import_problem(module, line, target)
    return problems


def _import_problem(module: Module, line: int, target: str) -> list[str]:
    where = f"{module.name}:{line}: imports {target}"
    target_package = _package_of(target)
    if target_package not in LAYERS:
        return [f"{where}, which is outside every layer package"] if module.layer is not None else []
    if module.layer is None or target_package == module.package or (module.name, target) in ALLOWED_SIBLING_IMPORTS:
        return []
    if LAYERS[target_package] > module.layer:
        return [f"{where}: layer {target_package} sits above {module.package}"]
    if LAYERS[target_package] == module.layer and module.layer != SCRIPT_LAYER:
        return [f"{where}: {target_package} is a sibling of {module.package} (share it through a lower layer)"]
    return []


def _private_definitions(module: Module) -> set[str]:
    """`_names` a module defines: top-level functions, classes and assignments, and class members."""
    names = set()
    for node in ast.walk(module.tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_violations(modules: list[Module]) -> list[str]:
    defined = {m.name: _private_definitions(m) for m in modules if m.name.startswith("utils.")}
    problems = []
    for module in modules:
        own = defined.get(module.name, set())
        for line, target, names in imports(module):
            problems += [f"{module.name}:{line}: imports the private {target}.{n}"
                         for n in names if n.startswith("_") and target != module.name]
        elsewhere = set().union(*(names for name, names in defined.items() if name != module.name)) - own
        for node in ast.walk(module.tree):
            if (isinstance(node, ast.Attribute) and node.attr in elsewhere
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                problems.append(f"{module.name}:{node.lineno}: reaches for {ast.unparse(node)}, private to another "
                                f"module")
    return problems


def size_violations(modules: list[Module]) -> list[str]:
    lengths = {m.name: len(m.path.read_text(encoding="utf-8").splitlines()) for m in modules}
    return [f"{name}: {n} lines (at most {MAX_MODULE_LINES}; split it where its sections part)"
            for name, n in lengths.items() if n > MAX_MODULE_LINES]


def init_violations(modules: list[Module]) -> list[str]:
    problems = []
    for module in modules:
        if module.path.name != "__init__.py":
            continue
        body = module.tree.body
        docstring_only = len(body) <= 1 and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                                for n in body)
        if not docstring_only:
            problems.append(f"{module.path.relative_to(REPO_ROOT)}: holds code; a package's __init__.py holds only "
                            f"a docstring listing its modules")
    return problems


def test_imports_follow_the_layers() -> None:
    problems = layer_violations(load_modules())
    assert not problems, "\n".join(problems)


def test_no_module_takes_another_modules_private_names() -> None:
    problems = private_violations(load_modules())
    assert not problems, "\n".join(problems)


def test_modules_stay_short() -> None:
    problems = size_violations(load_modules())
    assert not problems, "\n".join(problems)


def test_package_inits_hold_only_a_docstring() -> None:
    problems = init_violations(load_modules((LIBRARY,)))
    assert not problems, "\n".join(problems)
    packages = sorted(p.parent.name for p in LIBRARY.glob("*/__init__.py"))
    assert packages == sorted(LAYERS), f"layer packages on disk {packages} differ from LAYERS"


def test_importing_a_package_imports_nothing_heavy() -> None:
    code = ("import sys\n" + "".join(f"import utils.{p}\n" for p in LAYERS)
            + f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing the packages imported {result.stdout.strip()}"


def test_the_checker_catches_each_kind_of_violation(tmp_path: Path) -> None:
    """Each rule fires on a small tree that breaks it (so a rule that silently matches nothing fails here)."""
    def module(name: str, source: str) -> Module:
        return Module(REPO_ROOT / (name.replace(".", "/") + ".py"), name, ast.parse(source))

    loose = module("utils.helpers", "")
    upward = module("utils.lm.model", "from utils.train.loop import TrainingLoop\n")
    sibling = module("utils.serve.api", "def f():\n    from utils.eval.tasks import load_task\n")
    private = module("utils.eval.compare", "from utils.eval.tasks import _resolve_local\n")
    attribute = module("utils.benchmarks.train", "def f(loop):\n    return loop._train_step()\n")
    owner = module("utils.train.loop", "class TrainingLoop:\n    def _train_step(self):\n        pass\n")
    assert layer_violations([loose]) and layer_violations([upward]) and layer_violations([sibling])
    assert not layer_violations([module("utils.train.pretrain", "from utils.eval.tasks import load_task\n")])
    flat = module("utils.data_report", "from utils.data_prep import DataConfig, _Pass1\n")  # a module, not a package
    assert private_violations([private]) and private_violations([attribute, owner]) and private_violations([flat])
    assert not private_violations([owner])


def test_the_architecture_table_lists_every_package_and_module() -> None:
    """ARCHITECTURE.md's package table: one row per package, its layer, and exactly the modules on disk."""
    rows = re.findall(r"^\| `utils/(\w+)/` \| (\d) \| ([\w, ]+) \|", (REPO_ROOT / "ARCHITECTURE.md").read_text(),
                      re.MULTILINE)
    documented = {package: (int(layer), sorted(m.strip() for m in modules.split(","))) for package, layer, modules
                  in rows}
    on_disk = {package: (layer, sorted(p.stem for p in (LIBRARY / package).glob("*.py") if p.stem != "__init__"))
               for package, layer in LAYERS.items()}
    assert documented == on_disk
