"""What keeps the documentation true: no dated history in the code, no name in the docs that the
code no longer has, every cited docs section present, and the layering of docs/design.md.

**The docs-symbol rule.** In README.md, BUILD_NOTES.md and docs/*.md, every backticked span that
starts with a dotted Python name (``lottery.run``, ``workdir.read_records(...)``,
``lth_jax.models.Conv``, ``config.LATER_FIELDS``, ``train.eval_every``) is checked when its first
part is ``lth_jax``, the name of a module of lth_jax at any depth (``masks``, ``lottery``, ``imp``,
``convolution``, ...) or a config group (``model``, ``dataset``, ``train``, ``prune``, ``controls``,
``runtime``, and ``branch`` for a branch's fields). It must resolve: by importing the module (each
module of that name, when several share it) and ``getattr`` along the rest, or as a field of
``config.FIELDS`` (with or without a leading ``config.``), or as a field of a registered branch.
Spans with a ``*`` (patterns), names with a placeholder part in capitals (``config.FIELD``,
``branch.NAME``: ``PLACEHOLDERS``) and names whose last part is a file extension (``config.json``,
``report.md``, ``lth_jax.json``) are not symbols and are skipped; so are names whose first part is
anything else (``jax.jit``, ``helpers.TINY``).
"""

from __future__ import annotations

import ast
import glob
import importlib
import os
import re

import pytest

from helpers import REPO

DOCS = ["README.md", "BUILD_NOTES.md", *sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
CODE = sorted(glob.glob(os.path.join(REPO, "lth_jax", "**", "*.py"), recursive=True))

#: Dated lines that wait for their file's owner (lth_jax/models/* is being edited under another
#: issue): (path, a piece of the line). Remove an entry with the date; an entry whose line is gone
#: fails the test, so the list only shrinks.
PENDING_DATES: list[tuple[str, str]] = []

DATE = re.compile(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]")


def _read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def test_no_dated_history_in_the_code():
    """``grep -rnE "20[0-9]{2}-[01][0-9]-[0-3][0-9]" lth_jax/`` finds nothing: dates and the
    measurements made on them belong in docs/performance.md, cited by section."""
    found = []
    for path in CODE:
        rel = os.path.relpath(path, REPO)
        for n, line in enumerate(_read(rel).splitlines(), 1):
            if DATE.search(line) and not any(rel == p and piece in line for p, piece in PENDING_DATES):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "dated history in the code (move it to docs/performance.md):\n" + "\n".join(found)
    for path, piece in PENDING_DATES:
        assert piece in _read(path), f"{path} no longer has {piece!r}: remove it from PENDING_DATES"


# ----------------------------------------------------------------------------- cited sections

#: A citation of a docs section as code, tests and docs write it: the file under docs/, a comma
#: (or a colon), and the section's title in double quotes.
CITATION = re.compile(r"docs/(\w+\.md)[,:]?\s+\"([^\"]+)\"")


def _headings(doc: str) -> set[str]:
    return {line.lstrip("#").strip() for line in _read(os.path.join("docs", doc)).splitlines()
            if line.startswith("#")}


def test_every_cited_docs_section_exists():
    """Every citation of a docs section (``CITATION``) in the code, the tests, the configs, the
    benchmarks, the experiments and the docs names a heading of that file (a citation may wrap:
    white space and comment marks are folded)."""
    paths = CODE + [os.path.join(REPO, p) for p in DOCS] + sorted(
        p for folder in ("tests", "configs", "benchmarks", "experiments") for ending in ("py", "md")
        for p in glob.glob(os.path.join(REPO, folder, "**", f"*.{ending}"), recursive=True))
    missing = []
    for path in paths:
        rel = os.path.relpath(path, REPO)
        text = re.sub(r"\s*\n\s*(#:?|\*)?\s*", " ", _read(rel))  # comments and docstrings unwrapped
        for doc, section in CITATION.findall(text):
            if not os.path.exists(os.path.join(REPO, "docs", doc)):
                missing.append(f"{rel}: docs/{doc} does not exist")
            elif section not in _headings(doc):
                missing.append(f"{rel}: docs/{doc} has no section {section!r}")
    assert not missing, "\n".join(missing)


#: The folder beside the checkout that held the project's seed documents (written in two pieces so
#: that this file does not name it).
OUTSIDE = ".." + "/shared/"
#: Lines that wait for their file's owner (lth_jax/models/* is being edited under another issue),
#: as PENDING_DATES.
PENDING_OUTSIDE: list[tuple[str, str]] = []


#: A document named by a capitalised file name (README.md, BUILD_NOTES.md, ...).
UPPER_DOC = re.compile(r"\b[A-Z][A-Z_]+\.md\b")


def test_nothing_refers_to_a_path_outside_the_repository():
    """No file points into the folder beside the checkout, nor names a capitalised document
    (``UPPER_DOC``) that the repository does not have: what it cites is in docs/ (the
    measurements of that folder's convolution notes: docs/performance.md, "Convolutions inside
    loops on XLA:CPU")."""
    outside = []
    for pattern in ("**/*.py", "**/*.md", "**/*.sh"):
        for path in glob.glob(os.path.join(REPO, pattern), recursive=True):
            rel = os.path.relpath(path, REPO)
            if rel.startswith(("runs/", ".venv/", "build/")):
                continue
            for n, line in enumerate(_read(rel).splitlines(), 1):
                if OUTSIDE in line and not any(rel == p and piece in line
                                               for p, piece in PENDING_OUTSIDE):
                    outside.append(f"{rel}:{n}: {line.strip()}")
    assert not outside, "\n".join(outside)
    missing = []  # a document named by its file name alone that a clone lacks
    present = {name for _, _, names in os.walk(REPO) for name in names if name.endswith(".md")}
    for pattern in ("**/*.py", "**/*.md", "**/*.sh"):
        for path in glob.glob(os.path.join(REPO, pattern), recursive=True):
            rel = os.path.relpath(path, REPO)
            if rel.startswith(("runs/", ".venv/", "build/")):
                continue
            missing += [f"{rel}: {name}" for name in set(UPPER_DOC.findall(_read(rel)))
                        if name not in present]
    assert not missing, "documents the repository does not have:\n" + "\n".join(sorted(missing))
    for path, piece in PENDING_OUTSIDE:
        assert piece in _read(path), f"{path} no longer has {piece!r}: remove it from PENDING_OUTSIDE"


# ----------------------------------------------------------------------------- symbols in the docs

SPAN = re.compile(r"`([^`\n]+)`")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
FILE_ENDINGS = {"py", "md", "json", "jsonl", "png", "csv", "sh", "npz", "txt", "gz", "toml", "pb",
                "log", "out", "err"}
CONFIG_GROUPS = {"seed", "trials", "model", "dataset", "train", "prune", "controls", "runtime"}
PLACEHOLDERS = {"FIELD", "NAME", "VALUE", "FILE", "DIR"}


def _modules() -> dict[str, list[str]]:
    """Every module of lth_jax by its last name part (``imp`` -> ``["lth_jax.lottery.imp"]``)."""
    by_name: dict[str, list[str]] = {}
    for path in CODE:
        parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        by_name.setdefault(parts[-1], []).append(".".join(parts))
    return by_name


def _config_fields() -> set[str]:
    from lth_jax import config

    return {name for name, _, _ in config.FIELDS}


def _branch_fields() -> set[str]:
    from lth_jax import branches

    return {name for b in branches.names() for name, _, _ in branches.get(b).FIELDS}


def _resolves(module: str, attributes: list[str]) -> bool:
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return False
    for attribute in attributes:
        if not hasattr(obj, attribute):
            # a submodule not imported by its package yet
            try:
                obj = importlib.import_module(f"{obj.__name__}.{attribute}")
                continue
            except (ImportError, AttributeError):
                return False
        obj = getattr(obj, attribute)
    return True


def symbols_in(text: str) -> list[str]:
    """The dotted names the rule checks, in order (see the module's docstring)."""
    names = []
    modules = _modules()
    for span in SPAN.findall(text):
        if "*" in span:
            continue
        m = NAME.match(span.strip().lstrip("-"))
        if not m:
            continue
        name = m.group(0)
        first, last = name.split(".")[0], name.split(".")[-1]
        if last in FILE_ENDINGS or PLACEHOLDERS & set(name.split(".")):
            continue
        if first in ("lth_jax", "config", "branch") or first in modules or first in CONFIG_GROUPS:
            names.append(name)
    return names


def resolves(name: str) -> bool:
    """Whether ``name`` is a symbol of lth_jax, a config field or a branch field."""
    parts = name.split(".")
    fields = _config_fields()
    if name in fields or (parts[0] == "config" and ".".join(parts[1:]) in fields):
        return True
    if parts[0] == "branch" and ".".join(parts[1:]) in _branch_fields():
        return True
    if parts[0] == "lth_jax":
        return _resolves("lth_jax", parts[1:])
    return any(_resolves(module, parts[1:]) for module in _modules().get(parts[0], []))


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_name_no_symbol_that_no_longer_exists(doc):
    missing = sorted({name for name in symbols_in(_read(doc)) if not resolves(name)})
    assert not missing, f"{doc} names what lth_jax does not have: {', '.join(missing)}"


def test_the_symbol_rule_catches_a_name_that_is_gone():
    text = ("`lottery.run`, `workdir.read_records(path)`, `lottery.STOP_WAIT_SECONDS`, "
            "`lottery.level_inputs`, `train.eval_every`, `config.json`, `jax.jit`, `runtime.*`")
    found = symbols_in(text)
    assert found == ["lottery.run", "workdir.read_records", "lottery.STOP_WAIT_SECONDS",
                     "lottery.level_inputs", "train.eval_every"]
    assert [resolves(n) for n in found] == [True, True, False, False, True]


# ----------------------------------------------------------------------------- the layering

#: docs/design.md, "The layering rule": a module imports only modules earlier in this list; a
#: package's modules import each other in the package's listed order, and its __init__ may import
#: all of them (it re-exports their names). The models package orders itself.
ORDER = ["selection", "timing", "stats", "tensorboard", "download", "processes", "models", "masks", "pruning",
         "tickets", "scores", "structured", "compaction", "data", "config", "train", "instability",
         "workdir", "report", "lottery", "branches", "cli", "main"]
PACKAGES = {
    "lottery": ["experiment", "runner", "level", "records", "store", "imp"],
    "branches": ["base", "cheaper_tickets", "instability", "retrain"],
}
#: The one import against the order, allowed only inside a function: report.write_branch_reports
#: asks each branch's module for its report.
UPWARD = {("report", "branches")}
#: Imports that follow the order but stay inside a function, so that importing the importer stays
#: cheap (config is JAX-free; cli installs its signal handler before the heavy imports).
LAZY = {("config", "models"), ("cli", "*")}


def _imports(path: str) -> list[tuple[str, bool]]:
    """(imported lth_jax module, dotted below lth_jax; whether it runs at import time) of a file."""
    tree = ast.parse(_read(path))
    at_import, stack = set(), list(tree.body)
    while stack:  # everything but function bodies runs when the module is imported
        node = stack.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_import.add(id(node))
            stack.extend(ast.iter_child_nodes(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lth_jax"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("lth_jax")]
        else:
            continue
        for name in names:
            parts = name.split(".")
            while parts and not (os.path.exists(os.path.join(REPO, *parts) + ".py")
                                 or os.path.isdir(os.path.join(REPO, *parts))):
                parts.pop()  # an attribute, not a module
            if len(parts) > 1:
                found.append((".".join(parts[1:]), id(node) in at_import))
    return found


def _place(module: str) -> tuple[int, int]:
    """A module's position: in ORDER, then within its package (the package itself first)."""
    top, *rest = module.split(".")
    return ORDER.index(top), PACKAGES[top].index(rest[0]) + 1 if rest and top in PACKAGES else 0


@pytest.mark.parametrize("path", [os.path.relpath(p, REPO) for p in CODE])
def test_imports_follow_the_layering_of_docs_design(path):
    parts = path[:-3].split(os.sep)[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or parts[0] == "models":
        return
    me, wrong = ".".join(parts), []
    for imported, at_import in _imports(path):
        top = imported.split(".")[0]
        if top == parts[0] and (len(parts) == 1 or top == "models"):
            continue  # a package's __init__ and its own modules
        upward = _place(imported) >= _place(me)
        if upward and (parts[0], top) not in UPWARD:
            wrong.append(f"{me} imports {imported}, which comes after it")
        if at_import and ((parts[0], top) in UPWARD | LAZY or (parts[0], "*") in LAZY):
            wrong.append(f"{me} imports {imported} when it is imported; keep it inside a function")
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------------------- the layout


def test_experiments_holds_recorded_experiments_only():
    """experiments/: one folder per recorded experiment, each with its README and its run.sh, and
    the quickstart README.md names; benchmarks live in benchmarks/."""
    stray = []
    for name in sorted(os.listdir(os.path.join(REPO, "experiments"))):
        path = os.path.join(REPO, "experiments", name)
        if name == "quickstart.sh" or name.startswith("."):
            continue
        if not os.path.isdir(path):
            stray.append(f"experiments/{name}: not a recorded experiment's folder")
        elif not {"README.md", "run.sh"} <= set(os.listdir(path)):
            stray.append(f"experiments/{name}: no README.md and run.sh")
    assert not stray, "\n".join(stray)


def test_cpu_kernel_benchmarks_import_the_package_only():
    """benchmarks/cpu_kernels/: scripts that import the installed package, never each other, and
    do not edit ``sys.path``."""
    folder = os.path.join(REPO, "benchmarks", "cpu_kernels")
    scripts = {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}
    assert {"conv_gradients", "conv_forward", "pool_backward", "step_profile"} <= scripts
    wrong = []
    for script in sorted(scripts):
        source = _read(os.path.join("benchmarks", "cpu_kernels", f"{script}.py"))
        if "sys.path" in source:
            wrong.append(f"{script}.py edits sys.path")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            wrong += [f"{script}.py imports {n}" for n in names if n.split(".")[0] in scripts]
    assert not wrong, "\n".join(wrong)
