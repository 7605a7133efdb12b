"""README and docs/: every relative link resolves (file and #anchor), every repository path and every
`deft_jax.<module>.<name>` they name exists. Pure text checks (no JAX import), so they run in a blink."""
import pathlib
import re
import unicodedata

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"^(?:deft_jax|configs|experiments|tests|docs|\.ci)/[\w./-]*$")
MODULE = re.compile(r"^deft_jax(?:\.\w+)+")  # a call's arguments may follow
FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in _prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def _ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_resolve(doc):
    problems = []
    for match in LINK.finditer(_prose(doc.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor}")
    assert not problems, f"{doc.relative_to(REPO)}: " + "; ".join(problems)


def _module_file(parts: list[str]) -> tuple[pathlib.Path | None, list[str]]:
    """The longest prefix of `parts` that is a module or package, and the names after it."""
    for end in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:end])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate, parts[end:]
    return None, parts


def missing_names(text: str) -> list[str]:
    """Repository paths and `deft_jax.<module>[.<name>]` in code spans of `text` that do not exist."""
    problems = []
    for span in CODE_SPAN.findall(_prose(text)):
        for token in span.split():
            token = token.strip(".,;:()")
            if PATH.match(token) and not any(c in token for c in "<>*"):
                if not (REPO / token.split("::")[0]).exists():
                    problems.append(f"path {token}")
            elif match := MODULE.match(token):
                module, rest = _module_file(match.group(0).split("."))
                if module is None:
                    problems.append(f"module {token}")
                elif rest and not re.search(rf"\b{re.escape(rest[0])}\b", module.read_text()):
                    problems.append(f"{token}: {rest[0]!r} is not in {module.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_named_paths_and_modules_exist(doc):
    problems = missing_names(doc.read_text())
    assert not problems, f"{doc.relative_to(REPO)} names what does not exist: " + "; ".join(problems)


def test_slug_follows_github():
    assert slug("The capability continuum: a synthetic testbed where the prior is a dial (`experiments/continuum/`)") == (
        "the-capability-continuum-a-synthetic-testbed-where-the-prior-is-a-dial-experimentscontinuum")
    assert slug("Train step per objective and the torch reference (`experiments/bench_train.py`)") == (
        "train-step-per-objective-and-the-torch-reference-experimentsbench_trainpy")


def test_checks_can_fail(tmp_path):
    """A broken link, path and module name are reported (the checks above are not vacuous)."""
    doc = tmp_path / "x.md"
    doc.write_text("# Title\n[a](missing.md) [b](#title) [c](#nope)\n")
    links = [m.group(1) for m in LINK.finditer(doc.read_text())]
    assert links == ["missing.md", "#title", "#nope"]
    assert anchors(doc) == {"title"}
    assert missing_names("`deft_jax.training.loop.train_and_evaluate` `deft_jax/training/loop.py`") == []
    assert missing_names("`deft_jax.no_such_module` `deft_jax.training.loop.no_such_name(x)` "
                         "`deft_jax/no_such_file.py`\n```\n`deft_jax/in_a_fence.py`\n```\n") == [
        "deft_jax.no_such_module: 'no_such_module' is not in deft_jax/__init__.py",
        "deft_jax.training.loop.no_such_name(x: 'no_such_name' is not in deft_jax/training/loop.py",
        "path deft_jax/no_such_file.py"]
