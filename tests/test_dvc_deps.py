"""dvc.yaml declares, as each stage's code, exactly the advmix modules that its stage module imports, transitively.

An edit then reruns the stages whose code it touches and no other. `advmix/cli.py` (typer wiring) is not a
stage's code. When this fails after you add an import, put the printed paths into the stage's `deps:`.
"""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
LIBRARY = ROOT / "advmix"


def _module_file(name: str) -> Path | None:
    """advmix/a/b.py or advmix/a/b/__init__.py for the dotted module `name`, or None when it is no module."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[Path]:
    """The advmix modules `path` imports anywhere (also inside functions), with the packages they sit in."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "advmix"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "advmix":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from advmix import paths`
    files: set[Path] = set()
    for name in found:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            module = _module_file(".".join(parts[:i]))
            if module is not None:
                files.add(module)
    return files


def closure(stage_module: Path) -> set[str]:
    """Every advmix file that running `stage_module` may execute, relative to the repository root."""
    seen, todo = set(), [stage_module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imports(path) - seen
    return {p.relative_to(ROOT).as_posix() for p in seen}


def declared(deps: list) -> set[str]:
    """The advmix files a stage's `deps:` names, folders expanded to the .py files in them."""
    files: set[str] = set()
    for dep in deps:
        dep = dep if isinstance(dep, str) else next(iter(dep))
        if dep.split("/")[0] == "advmix":
            path = ROOT / dep
            files |= ({p.relative_to(ROOT).as_posix() for p in path.rglob("*.py")} if path.is_dir() else {dep})
    return files


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_declares_the_code_it_runs(stage):
    needed = closure(LIBRARY / "stages" / f"{stage.replace('-', '_')}.py")
    have = declared(STAGES[stage]["deps"])
    assert sorted(needed - have) == [], f"{stage}: add these to its deps"
    assert sorted(have - needed) == [], f"{stage}: it never runs these; remove them from its deps"


def test_the_closure_follows_function_level_imports(tmp_path):
    """A reader imported inside a function still counts (the stages import heavy code lazily)."""
    assert "advmix/probes.py" in closure(LIBRARY / "stages" / "probe.py")
    assert "advmix/gan/invert.py" not in closure(LIBRARY / "stages" / "probe.py")
    assert "advmix/classifier_training.py" in closure(LIBRARY / "stages" / "train.py")


def test_only_prepare_runs_the_dataset_builders():
    """Editing a builder (say advmix/data/celeba.py) reruns prepare; the later stages read the format alone."""
    builders = {f"advmix/data/{name}.py" for name in ("synthfaces", "colordigits", "celeba", "folder", "build")}
    runs_them = sorted(stage for stage, spec in STAGES.items() if builders & declared(spec["deps"]))
    assert runs_them == ["prepare"]


def test_dfr_and_the_report_need_no_generator_code():
    """A DFR refit reads the classifiers' features, the report reads metrics: neither runs StyleGAN2's code, so an
    edit to the generator's modules reruns neither."""
    for stage in ("dfr", "report"):
        assert not [f for f in closure(LIBRARY / "stages" / f"{stage}.py") if f.startswith("advmix/gan/")], stage
