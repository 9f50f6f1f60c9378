import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def fenced_commands(text: str) -> list[str]:
    blocks = text.split("```bash\n")[1:]
    return [b.split("```")[0].strip() for b in blocks]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start")[1].split("\n## ")[0]
    commands = fenced_commands(quick)
    assert len(commands) == 2, commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
    assert "dvc repro" in commands[0]


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 210, f"README.md has {len(lines)} lines; move detail to docs/"


LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|profiles)/[\w./-]*)")


def relative_links(text: str) -> list[str]:
    links = [m.split("#")[0] for m in LINK.findall(text)]
    return [link for link in links if link and "://" not in link and not link.startswith("mailto:")]


def test_readme_links_and_paths_exist():
    readme = (ROOT / "README.md").read_text()
    named = relative_links(readme)
    for span in CODE.findall(readme):
        named += [p.rstrip(".") for p in REPO_PATH.findall(span)]
    layout = readme.split("## Layout")[1].split("```")[1]
    named += [line.split()[0] for line in layout.splitlines() if line and not line[0].isspace()]
    assert named
    missing = sorted({p for p in named if not (ROOT / p).exists()})
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_docs_links_exist_and_stay_inside_the_repo():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for link in relative_links(text):
            target = (doc.parent / link).resolve()
            assert target.is_relative_to(ROOT.resolve()), f"{doc.name}: {link} points outside the repository"
            assert target.exists(), f"{doc.name}: {link} does not exist"
        for outside in ("shared/notes", "../shared"):
            assert outside not in text, f"{doc.name} cites {outside!r}, which is not in the repository"


def test_no_code_comment_cites_a_file_outside_the_repo():
    files = [ROOT / name for name in ("pyproject.toml", "dvc.yaml", "params.yaml", "prefect.yaml")]
    files += [p for folder in ("advmix", "bench", "flows", "profiles", ".ci") for p in (ROOT / folder).rglob("*")]
    for path in sorted(p for p in files if p.is_file() and p.suffix in (".py", ".toml", ".yaml", "")):
        text = path.read_text()
        for outside in ("shared/notes", "../shared", "DESIGN.md"):
            assert outside not in text, f"{path.relative_to(ROOT)} cites {outside!r}, which is not in the repository"
