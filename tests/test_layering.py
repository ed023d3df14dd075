"""The rooms of the house (ARCHITECTURE.md section 1) and who may import what, read from the source (AST): only
orchestration/ imports dagster, only registry/ imports mlflow, model/ stays free of files, YAML and Lance, and no
room imports one above it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "owl_pipeline"
# Room -> the project rooms it may import. A top-level module (config.py, ...) is a room of its own name.
ALLOWED = {
    "constants": set(), "files": set(), "locks": set(), "safe_text": set(), "config": {"constants"},
    "manifest": {"constants", "files"},
    "model": {"config", "constants"},
    "data": {"config", "constants", "files", "locks", "model"},
    "train": {"config", "constants", "files", "manifest", "locks", "model", "data", "eval"},
    "eval": {"config", "constants", "files", "model", "data"},
    "registry": {"config", "constants", "files", "model", "data", "eval"},
    "pipeline": {"config", "constants", "files", "manifest", "locks", "model", "data", "train", "eval", "registry"},
    "orchestration": {"config", "constants", "files", "manifest", "locks", "model", "data", "train", "eval", "registry",
                      "pipeline"},
    "cli": {"config", "constants", "files", "manifest", "locks", "model", "data", "train", "eval", "registry",
            "pipeline", "orchestration", "ui"},
    "ui": {"config", "constants", "registry", "pipeline", "orchestration"},
}
# Leaf modules every room may use.
for _room in ALLOWED.values():
    _room.add("safe_text")
# Third-party packages only some rooms may import.
RESTRICTED = {"dagster": {"orchestration"}, "dagster_pipes": {"orchestration"}, "mlflow": {"registry"}}
FORBIDDEN_IN_MODEL = {"yaml", "lance", "pyarrow", "dagster", "mlflow"}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.stat().st_size)


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def imported(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (nested imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def project_rooms(names: set[str]) -> set[str]:
    return {name.split(".")[1] for name in names if name.startswith("owl_pipeline.") and name.count(".") >= 1}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_stay_in_their_rooms(path):
    room, names = room_of(path), imported(path)
    upward = project_rooms(names) - ALLOWED[room] - {room}
    assert not upward, f"{path.relative_to(PACKAGE)} ({room}) imports {sorted(upward)}"
    for package, rooms in RESTRICTED.items():
        used = {n for n in names if n == package or n.startswith(package + ".")}
        assert not used or room in rooms, f"{path.relative_to(PACKAGE)} imports {package} outside {sorted(rooms)}"
    if room == "model":
        top = {n.split(".")[0] for n in names}
        assert not top & FORBIDDEN_IN_MODEL, f"{path.relative_to(PACKAGE)} imports {sorted(top & FORBIDDEN_IN_MODEL)}"


def test_every_room_is_known():
    assert {room_of(p) for p in modules()} <= set(ALLOWED)


def test_every_reference_to_the_design_document_names_a_section_of_architecture_md():
    """The design document a comment cites is in the repository, and so is the section it names."""
    import re

    root = PACKAGE.parent
    sections = set(re.findall(r"^## (\d+)\. ", (root / "ARCHITECTURE.md").read_text(), re.MULTILINE))
    outside = "DESIGN" + ".md"  # the document that lived outside the repository
    cited = []
    for path in [*PACKAGE.rglob("*.py"), *(root / "tests").rglob("*.py"), *(root / "bench").glob("*.py"),
                 root / "README.md"]:
        text = path.read_text()
        assert outside not in text, f"{path.relative_to(root)} cites {outside}; the design is in ARCHITECTURE.md"
        cited += [(path.relative_to(root), section) for section in re.findall(r"ARCHITECTURE\.md section (\d+)", text)]
    assert cited and sections >= {section for _, section in cited}, (cited, sections)


STEP_MODULES = {"owl_pipeline.pipeline.data_steps", "owl_pipeline.pipeline.training_steps",
                "owl_pipeline.pipeline.eval_steps"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (nested imports too; ``from a import b`` counts a.b if a module)."""
    names = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {n for n in imported(path) if n in names and n != name} for name, path in names.items()}


def test_no_step_module_imports_another():
    graph = _project_imports()
    for name in STEP_MODULES:
        assert not graph[name] & (STEP_MODULES - {name}), f"{name} imports {sorted(graph[name] & STEP_MODULES)}"


def test_no_import_circle_in_the_package():
    graph, state, path = _project_imports(), {}, []

    def visit(name):  # depth-first; a module met again while on the path closes a circle
        state[name] = "open"
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                raise AssertionError(" -> ".join(path[path.index(other):] + [other]))
            if other not in state:
                visit(other)
        path.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
