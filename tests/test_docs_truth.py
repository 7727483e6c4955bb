"""The user-facing docs say only what the code has: every ``skuforge ...`` command they show or the
Makefile runs, and every ``python -m <module>`` command of this repository they or the Makefile run,
parses with the real command-line parsers, and an option they quote alone (`--since`) is one of those
parsers'; every relative link and image they carry resolves; the
``SKUFORGE_*`` variables, Makefile targets and variables and pip extras they name exist; and README's
Configuration names every variable the code reads, with each setting's declared bounds.

Nothing here needs Kafka, the network or a dataset: a command is dispatched through
``skuforge_cli.main.main`` (or the module's ``main``) until the parser that would run it has parsed,
and stops there.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import re
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from tests.support.docs import (
    COMMAND_PREFIXES,
    DOCS,
    README,
    ROOT,
    after_prefix,
    check_parses,
    command_parsers,
    doc_argv,
    readme_section,
    settings_table_in,
)

MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


# ``VAR=value ...`` before a command: the command is checked without them (and each ``SKUFORGE_*``
# variable by test_every_variable_a_doc_names_is_read).
ASSIGNMENTS = r"(?:[A-Z][A-Z0-9_]*=[^\s`]*\s+)*"


def doc_commands(text: str, where: str) -> Iterator[tuple[str, str, bool]]:
    """(``file:line``, the command after ``skuforge``, whether it is a whole command line) of the doc
    or Makefile ``text``: lines of fenced blocks or recipes are whole commands (continuations joined,
    comments dropped); a command quoted inline in prose may name only part of one (``skuforge up
    --replicas``)."""
    lines = text.splitlines()
    fenced = diagram = False
    index = 0
    while index < len(lines):
        line, number = lines[index], index + 1
        index += 1
        if line.strip().startswith("```"):
            fenced = not fenced
            if fenced:  # a flow diagram names commands in boxes, not command lines
                block = itertools.takewhile(lambda text: not text.strip().startswith("```"), lines[index:])
                diagram = any(re.search("[─►◄│▼▲]", text) for text in block)
            continue
        if fenced or not where.endswith(".md"):
            command = re.sub(f"^{ASSIGNMENTS}", "", line.strip().removeprefix("$ "))
            command = command.replace("$(BIN)/", ".venv/bin/")  # the Makefile's
            if diagram or not command.startswith(COMMAND_PREFIXES):
                continue
            while command.endswith("\\") and index < len(lines):
                command = command[:-1] + " " + lines[index].strip()
                index += 1
            yield f"{where}:{number}", after_prefix(command.split(" #")[0].rstrip()), True
        else:
            for match in re.finditer(rf"`{ASSIGNMENTS}((?:\.venv/bin/)?skuforge [^`]+)`", line):
                yield f"{where}:{number}", after_prefix(match.group(1)), False


def _doc_commands() -> Iterator[tuple[str, str, bool]]:
    for doc in DOCS:
        yield from doc_commands(doc.read_text(encoding="utf-8"), f"{doc.relative_to(ROOT)}")
    yield from doc_commands(MAKEFILE, "Makefile")


DOC_COMMANDS = list(_doc_commands())


@pytest.mark.parametrize(("where", "command", "whole"), DOC_COMMANDS, ids=[w for w, _, _ in DOC_COMMANDS])
def test_a_documented_command_parses(
    where: str, command: str, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_parses(where, f"skuforge {command}", doc_argv(command), whole, monkeypatch)


def test_a_command_after_variable_assignments_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``VAR=value skuforge ...``, on a command line or quoted in prose, is checked as its command."""
    text = (
        "```bash\nSKUFORGE_CONSOLE_USERS=alice:pw .venv/bin/skuforge serve console --no-such-flag  # x\n```\n"
        "Start it so (`SKUFORGE_SCENES_URI=... skuforge up --replicas`).\n"
    )
    line, quote = doc_commands(text, "docs/planted.md")
    assert quote == ("docs/planted.md:4", "up --replicas", False)
    assert line == ("docs/planted.md:2", "serve console --no-such-flag", True)
    with pytest.raises(AssertionError, match=r"no-such-flag"):
        check_parses(line[0], f"skuforge {line[1]}", doc_argv(line[1]), True, monkeypatch)


def test_the_makefiles_own_skuforge_commands_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's ``$(BIN)/skuforge ...`` or ``$(BIN)/python -m skuforge_cli ...`` is a whole command."""
    makefile = (
        "a:\n\t$(BIN)/skuforge matting official --out $@ --no-such-flag\n"
        "b:\n\t$(BIN)/python -m skuforge_cli up\n"
    )
    (recipe, module), real = doc_commands(makefile, "Makefile"), doc_commands(MAKEFILE, "Makefile")
    assert module == ("Makefile:4", "up", True)
    assert recipe == ("Makefile:2", "matting official --out $@ --no-such-flag", True)
    with pytest.raises(AssertionError, match=r"no-such-flag"):
        check_parses(recipe[0], f"skuforge {recipe[1]}", doc_argv(recipe[1]), True, monkeypatch)
    assert {command for _, command, _ in real} >= {"demo", "up"}


# ``python -m MODULE ...`` of this repository's packages (skuforge_cli is the skuforge command, above).
MODULE_COMMAND = re.compile(r"python3? -m ((?:bench|devstack|schemas|services|shared)(?:\.\w+)+)(.*)")
# What the Makefile passes for its variables: a value of that kind the parsers accept.
MAKE_VALUES = {
    "$(GROCERY)": "some/dir",
    "$(KAFKA_DATA)": "var/kafka",
    "$(KAFKA_PORT)": "9092",
    "$(KAFKA_CONTROLLER_PORT)": "9093",
}


def module_commands(text: str, where: str) -> Iterator[tuple[str, str, str, bool]]:
    """(``file:line``, module, its arguments, whether a whole command line) of every ``python -m``
    command of this repository in ``text``: on a line of a fenced block, or of a Makefile (a whole
    command, continuations joined), or quoted inline in prose, where a quote may run onto the next
    line and may name only part of a command."""
    lines = text.splitlines()
    prose = [""] * len(lines)  # the text outside fenced blocks, at the same line numbers
    fenced = False
    index = 0
    while index < len(lines):
        line, number = lines[index].strip(), index + 1
        index += 1
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or not where.endswith(".md"):
            while line.endswith("\\") and index < len(lines):
                line = line[:-1] + " " + lines[index].strip()
                index += 1
            found = MODULE_COMMAND.search(line.split(" #")[0])
            if found:
                yield f"{where}:{number}", found.group(1), found.group(2), True
        else:
            prose[number - 1] = lines[number - 1]
    joined = "\n".join(prose)
    for quote in re.finditer(r"`([^`]+)`", joined):
        found = MODULE_COMMAND.search(" ".join(quote.group(1).split()))
        if found and "\n\n" not in quote.group(1):
            number = joined.count("\n", 0, quote.start()) + 1
            yield f"{where}:{number}", found.group(1), found.group(2), False


def _module_commands() -> Iterator[tuple[str, str, str, bool]]:
    for doc in DOCS:
        yield from module_commands(doc.read_text(encoding="utf-8"), f"{doc.relative_to(ROOT)}")
    yield from module_commands(MAKEFILE, "Makefile")


MODULE_COMMANDS = list(_module_commands())


def check_module_command(
    where: str, module: str, arguments: str, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module exists and has a ``main``, and ``arguments`` parse with its parser."""
    shown = f"python -m {module}{arguments}".strip()
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        pytest.fail(f"{where}: `{shown}`: no module {module} ({exc})")
    main = getattr(imported, "main", None)
    assert callable(main), f"{where}: `{shown}`: {module} has no main()"
    argv = doc_argv(" ".join(MAKE_VALUES.get(word, word) for word in arguments.split()))
    if not inspect.signature(main).parameters:  # it parses no arguments (and running it would act)
        assert not argv, f"{where}: `{shown}`: {module} takes no arguments"
        return
    check_parses(where, shown, argv, whole, monkeypatch, entry=main)


@pytest.mark.parametrize(
    ("where", "module", "arguments", "whole"), MODULE_COMMANDS, ids=[w for w, *_ in MODULE_COMMANDS]
)
def test_a_documented_module_command_parses(
    where: str, module: str, arguments: str, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_module_command(where, module, arguments, whole, monkeypatch)


def test_a_module_command_with_an_option_its_parser_lacks_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a flag the benchmark does not have, quoted across a line break."""
    text = "Run `python -m bench.store --items 10\n--skus 2 --no-such-flag` to see.\n"
    (command,) = module_commands(text, "docs/planted.md")
    assert command == ("docs/planted.md:1", "bench.store", " --items 10 --skus 2 --no-such-flag", False)
    with pytest.raises(AssertionError, match=r"has no option \[.--no-such-flag.\]"):
        check_module_command(*command, monkeypatch)


# Tools besides ours whose options a doc quotes alone (helm's `--set`, docker's `--build-arg`, a
# Python build's `--enable-shared`): an option no parser of ours has is theirs in a paragraph naming one.
OTHER_TOOLS = re.compile(r"\b(?:helm|docker|pytest|kafka-topics|pip|kubectl|configure)\b", re.IGNORECASE)


def prose_options(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, option, its paragraph) of each option quoted in prose without its command (`--since`,
    `--reason R`, `--tune-*`: a quote that starts with ``--``, every option in it). A paragraph ends at
    a blank line, a heading or a command block; a table row is one of its own."""
    paragraphs: list[list[tuple[int, str]]] = [[]]
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```") or fenced:
            fenced ^= stripped.startswith("```")
            paragraphs.append([])
            continue
        if not stripped or stripped.startswith(("#", "|")):
            paragraphs.append([])
        paragraphs[-1].append((number, line))
    for paragraph in filter(None, paragraphs):
        joined = "\n".join(line for _, line in paragraph)
        for quote in re.finditer(r"`(--[^`]+)`", joined):
            number = paragraph[0][0] + joined.count("\n", 0, quote.start())
            for option in re.findall(r"(?:^|\s)(--[a-z][a-z0-9-]*\*?)", quote.group(1)):
                yield number, option, joined


@functools.cache
def known_options() -> frozenset[str]:
    """Every option of every ``skuforge`` command and subcommand (each server of ``serve``), and of
    each module of this repository the docs or the Makefile run with ``python -m``."""
    from schemas.flow import SERVERS
    from skuforge_cli.main import COMMANDS

    commands = [[name] for name in COMMANDS if name != "serve"] + [["serve", name] for name in SERVERS]
    known: set[str] = set()
    with pytest.MonkeyPatch.context() as monkeypatch:
        for argv in commands:
            known.update(*(parser._option_string_actions for _, parser in command_parsers(argv, monkeypatch)))
        for module in sorted({module for _, module, _, _ in MODULE_COMMANDS}):
            main = importlib.import_module(module).main
            if inspect.signature(main).parameters:
                parsers = command_parsers([], monkeypatch, entry=main)
                known.update(*(parser._option_string_actions for _, parser in parsers))
    return frozenset(known)


def options_unknown_in(text: str, known: Collection[str]) -> list[str]:
    """``line: option`` of each option ``text`` quotes alone in prose that none of ``known`` is (an
    option ending in ``*`` is a family: some option must start with it), but where the paragraph names
    another tool, whose options these may be."""
    unknown = []
    for number, option, paragraph in prose_options(text):
        family = option.endswith("*")
        found = any(name.startswith(option[:-1]) for name in known) if family else option in known
        if not found and not OTHER_TOOLS.search(paragraph):
            unknown.append(f"{number}: {option}")
    return unknown


@pytest.mark.parametrize("doc", DOCS, ids=[f"{doc.relative_to(ROOT)}" for doc in DOCS])
def test_every_option_a_doc_quotes_alone_is_an_option_of_ours(doc: Path) -> None:
    unknown = options_unknown_in(doc.read_text(encoding="utf-8"), known_options())
    assert not unknown, f"{doc.relative_to(ROOT)} quotes options no skuforge command or module has: {unknown}"


def test_an_option_quoted_alone_that_no_command_has_is_caught() -> None:
    """An option quoted alone ("pass `--since`") was checked by nothing: only one inside a quoted
    ``skuforge ...`` command was held to its parser, so a renamed option stayed in the prose."""
    text = (
        "Replay with `skuforge dlq replay TOPIC`; pass `--sincee 2h` to leave out older letters,\n"
        "or `--reason R`, or a `--tune-*` option.\n\n"
        "Render it with `helm template`, giving `--set a=b` and `--kube-version 1.33.0`.\n\n"
        "| a row | `--no-such-flag` |\n| a row of `docker` | `--build-arg X=1` |\n"
    )
    # The command check sees the quoted command alone, which parses.
    assert [command for _, command, _ in doc_commands(text, "docs/planted.md")] == ["dlq replay TOPIC"]
    assert options_unknown_in(text, known_options()) == ["1: --sincee", "6: --no-such-flag"]
    assert {"--since", "--reason", "--tune-stages", "--with-prometheus"} <= known_options()


def _relative_links() -> Iterator[tuple[str, Path, str]]:
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in re.finditer(r"\]\(([^)\s]+)\)", line):
                target = match.group(1).split("#")[0]
                if target and not re.match(r"[a-z]+:", target):
                    yield f"{doc.relative_to(ROOT)}:{number}", doc.parent / target, match.group(1)


LINKS = list(_relative_links())


@pytest.mark.parametrize(("where", "target", "link"), LINKS, ids=[f"{w} {link}" for w, _, link in LINKS])
def test_a_relative_link_or_image_resolves(where: str, target: Path, link: str) -> None:
    assert target.exists(), f"{where}: ({link}) points at {target.relative_to(ROOT)}, which does not exist"


def _make_targets() -> dict[str, str]:
    """The Makefile's documented targets (``name: ... ## what``), as ``make help`` lists them."""
    return dict(re.findall(r"^([a-z-]+):.*?## (.*)$", MAKEFILE, flags=re.MULTILINE))


def make_targets_missing_from(readme: str) -> list[str]:
    """Documented Makefile targets README's "Make targets" section does not name."""
    section = readme_section(readme, "Make targets")
    return [target for target in _make_targets() if f"`make {target}`" not in section]


def setup_extras_misstated_in(readme: str) -> str | None:
    """What README's "Installing" says `make setup` installs, when it is not the Makefile's EXTRAS."""
    extras = re.search(r"^EXTRAS \?= (\S+)$", MAKEFILE, flags=re.MULTILINE)
    said = re.search(r"`make setup` installs `([^`]+)`", readme_section(readme, "Installing"))
    assert extras and said, "README's Installing section or the Makefile's EXTRAS moved"
    return (
        None
        if said.group(1) == extras.group(1)
        else f"README says {said.group(1)}, the Makefile {extras.group(1)}"
    )


def test_every_documented_make_target_is_in_readme() -> None:
    missing = make_targets_missing_from(README)
    assert not missing, f"README's Make targets section does not name {missing} (`make help` does)"


def make_targets_unknown_in(text: str) -> list[str]:
    """Targets ``make ...`` names in ``text`` (quoted, starting a line of a command block, or in a
    command's comment: after it, or a comment line of a command block) that the Makefile does not
    have: every one of ``make setup kafka-up``, not only the first."""
    targets = {*_make_targets(), *re.findall(r"^([a-z-]+):", MAKEFILE, flags=re.MULTILINE)}
    commands = re.findall(r"(?:^[ \t]*(?:\$ )?|`)make((?: +[a-z][a-z-]*)+)", text, flags=re.MULTILINE)
    # A comment after a command (``make demo  # = make setup, ...``), and a comment line of a command
    # block (``# then run make demo``); in prose a line that is all comment is a Markdown heading,
    # where "make" is a verb.
    comments = re.findall(r"\S[ \t]+#(.*)", text) + [
        line.strip()[1:]
        for block in re.findall(r"^[ \t]*```.*\n((?:.*\n)*?)[ \t]*```", text, flags=re.MULTILINE)
        for line in block.splitlines()
        if line.strip().startswith("#")
    ]
    named = {target for command in commands for target in command.split()}
    # A comment is prose too: its ``make`` names the targets that follow up to the first other word
    # ("run make demo to see it"), and "make sure" is no command.
    for comment in comments:
        for words in re.findall(r"(?<![\w-])make((?: +[a-z][a-z-]*)+)", comment):
            first, *more = words.split()
            named |= {first} - MAKE_AS_A_VERB
            named |= set(itertools.takewhile(targets.__contains__, more))
    return sorted(named - targets)


# Words after "make" the verb, in a comment: "make sure", "make it".
MAKE_AS_A_VERB = {"sure", "it", "a", "an", "the", "this", "that", "them", "room", "space"}


@pytest.mark.parametrize("doc", DOCS, ids=[f"{doc.relative_to(ROOT)}" for doc in DOCS])
def test_every_make_target_the_docs_name_exists(doc: Path) -> None:
    unknown = make_targets_unknown_in(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(ROOT)} names Makefile targets that do not exist: {unknown}"


def test_a_second_make_target_that_does_not_exist_is_caught() -> None:
    """Every target of ``make setup kafka-up`` counts, in a command line as in a quote."""
    planted = README.replace("make setup kafka-up", "make setup kafka-start")
    assert make_targets_unknown_in(planted + "`make setup kafka-go`") == ["kafka-go", "kafka-start"]


def removals_unsaid(makefile: str, readme: str) -> list[str]:
    """Folders ``make clean`` removes (``rm -rf ...``) that its ``make help`` line or README's
    "Make targets" does not name: var/ holds the official U2-NetP and the built helm beside the
    local state, and `make help` said only "(var/)", leaving out demo-out/ too."""
    recipe = re.search(r"^clean:.*?## (.*)\n\trm -rf (.*)$", makefile, flags=re.MULTILINE)
    assert recipe, "the Makefile's clean target moved"
    said = re.search(r"`make clean` \(([^)]*)\)", " ".join(readme_section(readme, "Make targets").split()))
    assert said, "README's Make targets section no longer says what `make clean` removes"
    return [
        f"{where} leaves out {folder}/"
        for folder in recipe.group(2).split()
        for where, text in (("make help", recipe.group(1)), ("README", said.group(1)))
        if f"{folder}/" not in text
    ]


def test_make_clean_says_every_folder_it_removes() -> None:
    unsaid = removals_unsaid(MAKEFILE, README)
    assert not unsaid, f"`make clean` removes more than it says: {unsaid}"


def test_a_folder_make_clean_removes_unsaid_is_caught() -> None:
    makefile = "clean:  ## remove local state (var/)\n\trm -rf var demo-out\n"
    readme = "\n## Make targets\n\n`make clean` (removes `var/` and `demo-out/`).\n"
    assert removals_unsaid(makefile, readme) == ["make help leaves out demo-out/"]


def make_variables_unknown_in(text: str) -> list[str]:
    """Variables ``make TARGET VAR=value`` sets in ``text`` that the Makefile never reads."""
    read = set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", MAKEFILE))
    given = {
        name
        for assignments in re.findall(r"\bmake [a-z-]+((?:\s+[A-Z][A-Z0-9_]*=\S*)+)", text)
        for name in re.findall(r"([A-Z][A-Z0-9_]*)=", assignments)
    }
    return sorted(given - read)


@pytest.mark.parametrize("doc", DOCS, ids=[f"{doc.relative_to(ROOT)}" for doc in DOCS])
def test_every_make_variable_a_doc_sets_is_read_by_the_makefile(doc: Path) -> None:
    unknown = make_variables_unknown_in(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(ROOT)} sets variables the Makefile does not read: {unknown}"


def test_a_make_variable_the_makefile_does_not_read_is_caught() -> None:
    assert make_variables_unknown_in("`make bench-real GROCERY_DIR=x KAFKA_PORT=1`") == ["GROCERY_DIR"]


def extras_unknown_in(text: str) -> list[str]:
    """Extras ``text`` names (``skuforge[cpu,console]``, or README's ``[gpu]``) that pyproject.toml
    does not declare."""
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    named = {
        extra
        for group in re.findall(r"skuforge\[([a-z,-]+)\]|`\[([a-z-]+)\]`", text)
        for extra in ",".join(group).split(",")
        if extra
    }
    return sorted(named - set(declared["optional-dependencies"]))


@pytest.mark.parametrize("doc", DOCS, ids=[f"{doc.relative_to(ROOT)}" for doc in DOCS])
def test_every_extra_a_doc_names_is_declared(doc: Path) -> None:
    unknown = extras_unknown_in(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(ROOT)} names extras pyproject.toml does not declare: {unknown}"


def test_an_extra_pyproject_does_not_declare_is_caught() -> None:
    assert extras_unknown_in("`pip install 'skuforge[cpu,cuda]'`; `[plots]` adds matplotlib") == [
        "cuda",
        "plots",
    ]


def test_readme_says_what_make_setup_installs() -> None:
    assert setup_extras_misstated_in(README) is None, setup_extras_misstated_in(README)


ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def modules_missing_from(architecture: str, package: str) -> list[str]:
    """Modules (``name.py``) and packages (``name/``) directly under ``package`` that the map in
    docs/architecture.md ("Where the code lives") names nowhere, neither alone nor in a path."""
    section = architecture.split("\n## Where the code lives\n", 1)[1].split("\n## ", 1)[0]
    named = {
        part + ("/" if index < len(parts) - 1 else "")
        for token in re.findall(r"`([^`\s]+)`", section)
        for parts in [token.split("/")]
        for index, part in enumerate(parts)
        if part
    }
    folder = ROOT / package
    present = sorted(
        [path.name for path in folder.glob("*.py") if path.name != "__init__.py"]
        + [f"{path.name}/" for path in folder.iterdir() if (path / "__init__.py").is_file()]
    )
    return [name for name in present if name not in named]


@pytest.mark.parametrize("package", ["shared", "devstack"])
def test_the_architecture_map_names_every_module_of_the_platform_and_the_local_stack(package: str) -> None:
    missing = modules_missing_from(ARCHITECTURE, package)
    named = ", ".join(f"{package}/{name}" for name in missing)
    assert not missing, f"docs/architecture.md's 'Where the code lives' does not name {named}"


# Where the code reads a ``SKUFORGE_*`` variable outside the settings models: Python (an
# ``os.environ`` read, or the name in the message or docstring that goes with it), the compose files'
# ``${SKUFORGE_...}``, the Makefile's ``$(SKUFORGE_...)``. Tests read a few knobs of their own.
VARIABLE = re.compile(r"SKUFORGE_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_{])")
CODE_PACKAGES = ("schemas", "shared", "services", "devstack", "skuforge_cli", "bench")
# Set by the local stack's supervisor on the processes it starts, to find them again: not a setting.
NOT_SETTINGS = {"SKUFORGE_SUPERVISOR_ID"}


def _settings_variables() -> set[str]:
    from shared.config import ENV_PREFIX
    from skuforge_cli.main import SETTINGS_MODELS

    return {ENV_PREFIX + name.upper() for model in SETTINGS_MODELS for name in model.model_fields}


def _variables_in(paths: Iterator[Path]) -> set[str]:
    return {name for path in paths for name in VARIABLE.findall(path.read_text(encoding="utf-8"))}


def _code_files() -> Iterator[Path]:
    for package in CODE_PACKAGES:
        yield from (ROOT / package).rglob("*.py")
    yield from (ROOT / "deploy").glob("compose*.yaml")
    yield ROOT / "Makefile"


def variables_not_read(text: str) -> list[str]:
    """``SKUFORGE_*`` variables ``text`` names that no settings model, code or test reads (a name
    ending in ``_`` or ``_*`` is a family: some variable must start with it)."""
    tests = (path for path in (ROOT / "tests").rglob("*.py") if path != Path(__file__).resolve())
    read = _settings_variables() | _variables_in(_code_files()) | _variables_in(tests)
    named = set(VARIABLE.findall(text))
    families = {match.rstrip("*") for match in re.findall(r"SKUFORGE_[A-Z0-9_]*_\*?", text)}
    unknown = {name for name in named if name not in read}
    unknown |= {family for family in families if not any(name.startswith(family) for name in read)}
    return sorted(unknown)


@pytest.mark.parametrize("doc", DOCS, ids=[f"{doc.relative_to(ROOT)}" for doc in DOCS])
def test_every_variable_a_doc_names_is_read(doc: Path) -> None:
    unknown = variables_not_read(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(ROOT)} names variables nothing reads: {unknown}"


def test_a_variable_nothing_reads_is_caught() -> None:
    text = "Set `SKUFORGE_MATTING_GPU=1` (or any `SKUFORGE_MATING_*`); `SKUFORGE_KAFKA_SASL_*` exists."
    assert variables_not_read(text) == ["SKUFORGE_MATING_", "SKUFORGE_MATTING_GPU"]


def variables_missing_from_configuration(readme: str) -> list[str]:
    """``SKUFORGE_*`` variables the code reads that README's Configuration section does not name."""
    section = readme_section(readme, "Configuration")
    read = _settings_variables() | _variables_in(_code_files())
    return sorted(name for name in read - NOT_SETTINGS if f"`{name}`" not in section)


def test_readme_configuration_names_every_variable_the_code_reads() -> None:
    missing = variables_missing_from_configuration(README)
    assert not missing, f"README's Configuration section does not name {missing}, which the code reads"


# A variable without the prefix that the code reads by name (``os.environ.get("JAVA")``; not one it
# sets, ``os.environ["U2NET_HOME"] = ...``, for a library it calls).
UNPREFIXED_READ = re.compile(
    r"""(?:environ\.get\(|environ\[|getenv\()["']([A-Z][A-Z0-9_]*)["'](?!\]\s*=(?!=))"""
)
# Standard variables the code extends for the processes it starts (Triton's libpython, a benchmark's
# workers): the system's, not knobs of skuforge.
PROCESS_VARIABLES = {"LD_LIBRARY_PATH", "PYTHONPATH"}


def unprefixed_variables_missing_from_configuration(readme: str) -> list[str]:
    """Variables without the ``SKUFORGE_`` prefix that the code reads and README's Configuration does
    not name: the broker's ``JAVA`` and ``MVN`` were said only in its module docstring and its error
    messages, so a reader of README's tools table, which lists what the tools read, set neither."""
    section = readme_section(readme, "Configuration")
    read = {
        name
        for path in _code_files()
        if path.suffix == ".py"
        for name in UNPREFIXED_READ.findall(path.read_text(encoding="utf-8"))
        if not name.startswith("SKUFORGE_")
    }
    return sorted(name for name in read - PROCESS_VARIABLES if f"`{name}`" not in section)


def test_readme_configuration_names_every_unprefixed_variable_the_code_reads() -> None:
    missing = unprefixed_variables_missing_from_configuration(README)
    assert not missing, f"README's Configuration section does not name {missing}, which the code reads"


def test_an_unprefixed_variable_readme_leaves_out_is_caught() -> None:
    assert unprefixed_variables_missing_from_configuration(README.replace("`MVN`", "MVN")) == ["MVN"]


def test_readme_settings_table_is_the_generated_one_and_no_more() -> None:
    """tests/test_config.py finds the generated table in README; a stale row after it would pass there."""
    from shared.config import settings_table_markdown
    from skuforge_cli.main import SETTINGS_MODELS

    generated = settings_table_markdown(SETTINGS_MODELS)
    assert settings_table_in(README) == generated, (
        "README's settings table is not `skuforge config --markdown`'s: paste that over it"
    )
    planted = README.replace(generated, generated + "\n| `SKUFORGE_OLD` | `1` | gone |")
    assert settings_table_in(planted) != generated


# A setting's declared bounds, and the words the settings table gives them.
BOUND_WORDS = [
    ("ge", "le", "[{}, {}]"),
    ("gt", "lt", "({}, {})"),
    ("ge", "lt", "[{}, {})"),
    ("gt", "le", "({}, {}]"),
    ("ge", None, "at least {}"),
    ("gt", None, "above {}"),
    (None, "le", "at most {}"),
    (None, "lt", "below {}"),
]


def test_the_settings_table_gives_every_declared_bound_and_choice() -> None:
    """A variable's row says the numbers it may take and, for a fixed set of values, which: a bound
    found only at start-up, as an error, is a bound the table hides."""
    from typing import Literal, get_args, get_origin

    from shared.config import ENV_PREFIX, settings_table_markdown
    from skuforge_cli.main import SETTINGS_MODELS

    rows = {
        row.split(" | ")[0].strip("|` "): row for row in settings_table_markdown(SETTINGS_MODELS).splitlines()
    }
    hidden = []
    for model in SETTINGS_MODELS:
        for name, field in model.model_fields.items():
            row = rows[ENV_PREFIX + name.upper()]
            bounds = {
                key: getattr(item, key)
                for item in field.metadata
                for key in ("ge", "gt", "le", "lt")
                if getattr(item, key, None) is not None
            }
            for low, high, words in BOUND_WORDS:
                if set(bounds) == {key for key in (low, high) if key}:
                    said = words.format(*(bounds[key] for key in (low, high) if key))
                    if said not in row:
                        hidden.append(f"{ENV_PREFIX}{name.upper()}: {said}")
            choices = [
                arg for arg in (field.annotation, *get_args(field.annotation)) if get_origin(arg) is Literal
            ]
            hidden += [
                f"{ENV_PREFIX}{name.upper()}: {value}"
                for choice in choices
                for value in get_args(choice)
                if f"`{value}`" not in row
            ]
    assert not hidden, f"the settings table does not give {hidden}"


def service_rows_misstating_the_flow(readme: str) -> list[str]:
    """Rows of README's service table (``| `NAME` | `in`, ... → ... `out` ... |``) whose topics are not
    what ``schemas/flow.py`` declares the service consumes (before the first ``→``) and produces (the
    flow's topic names after it)."""
    from schemas.flow import SERVERS, STAGES
    from schemas.topics import ALL_TOPICS, PASSTHROUGH_OUT

    names = {
        name: topic.name
        for topic in (*ALL_TOPICS, PASSTHROUGH_OUT)
        for name in (topic.schema_name, topic.name)
    }
    wrong = []
    for command, text in re.findall(r"^\| `((?:serve )?[a-z-]+)` \| ([^|]*) \|", readme, flags=re.MULTILINE):
        service = SERVERS[command[len("serve ") :]] if command.startswith("serve ") else STAGES[command]
        before, _, after = text.partition("→")
        said = [
            sorted({names[name] for name in re.findall(r"`([^`]+)`", part) if name in names})
            for part in (before, after)
        ]
        declared = [sorted(topic.name for topic in topics) for topics in (service.consumes, service.produces)]
        if said != declared:
            wrong.append(f"{command}: says {said[0]} → {said[1]}, the flow {declared[0]} → {declared[1]}")
    return wrong


def test_readme_service_table_says_what_each_service_consumes_and_produces() -> None:
    wrong = service_rows_misstating_the_flow(README)
    assert not wrong, f"README's service table misstates the flow (schemas/flow.py): {wrong}"


def test_a_service_row_missing_a_topic_is_caught() -> None:
    row = "| `gate` | `image.matted` → `gate.accepted`: the good ones | [docs](docs/gate-and-trainstore.md) |"
    assert service_rows_misstating_the_flow(row) == [
        "gate: says ['image.matted.v1'] → ['gate.accepted.v1'], the flow "
        "['image.matted.v1'] → ['correction.pending.v1', 'gate.accepted.v1']"
    ]


def console_metrics_missing_from(console_doc: str) -> list[str]:
    """Metrics the console's own registry serves (``ConsoleMetrics``) that docs/console.md's Metrics
    table does not name."""
    from devstack.metrics_doc import catalogue

    section = console_doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([a-z_]+)(?:\{[^}]*\})?` \|", section, flags=re.MULTILINE))
    return [doc.name for doc in catalogue() if doc.services == "console" and doc.name not in named]


def test_the_console_doc_names_every_console_metric() -> None:
    missing = console_metrics_missing_from((ROOT / "docs" / "console.md").read_text(encoding="utf-8"))
    assert not missing, f"docs/console.md's Metrics table does not name {missing}"


def test_a_console_metric_missing_from_its_doc_is_caught() -> None:
    doc = "\n## Metrics\n\n| metric | type | meaning |\n| --- | --- | --- |\n"
    doc += "| `skuforge_console_tasks{state}` | gauge | queue depth by state |\n"
    assert "skuforge_console_published_total" in console_metrics_missing_from(doc)
    assert "skuforge_console_tasks" not in console_metrics_missing_from(doc)


COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def chart_alerts_misstated_in(ops: str) -> list[str]:
    """What docs/ops.md says wrong of the alerts the Helm chart adds beside the pipeline's (its
    ``rules/*.yml`` but ``skuforge.yml``, a link to deploy/prometheus/alerts.yml): how many there are
    ("The Helm chart adds three alerts of its own"), and a runbook section (``### Name``) for each."""
    import yaml

    rules = sorted(
        path for path in (ROOT / "deploy/helm/skuforge/rules").glob("*.yml") if not path.is_symlink()
    )
    names = [
        rule["alert"]
        for path in rules
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    said = re.search(r"The Helm chart adds (\w+) alerts? of its own", ops)
    assert said, "docs/ops.md no longer says how many alerts the Helm chart adds"
    wrong = (
        []
        if COUNT_WORDS.get(said.group(1)) == len(names)
        else [f"says {said.group(1)}, the chart has {names}"]
    )
    return wrong + [f"no runbook section for {name}" for name in names if f"\n### {name}\n" not in ops]


def test_ops_says_which_alerts_the_chart_adds() -> None:
    wrong = chart_alerts_misstated_in((ROOT / "docs" / "ops.md").read_text(encoding="utf-8"))
    assert not wrong, f"docs/ops.md misstates the Helm chart's own alerts: {wrong}"


def test_a_miscounted_chart_alert_is_caught() -> None:
    ops = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    assert chart_alerts_misstated_in(ops.replace("### SkuforgePodsUnavailable\n", "### Gone\n")) == [
        "no runbook section for SkuforgePodsUnavailable"
    ]
    miscounted = re.sub(r"The Helm chart adds \w+ alerts", "The Helm chart adds six alerts", ops)
    assert chart_alerts_misstated_in(miscounted)[0].startswith("says six, the chart has ")


def test_a_make_target_in_a_command_comment_is_checked() -> None:
    """docs/up-and-demo.md's ``make demo  # = make setup, then ...``: a target named in a command's
    comment was read by no check, so a renamed one would have stayed in the comment."""
    planted = "```bash\nmake demo      # = make setup, then make kafka-nope\n```\n"
    assert make_targets_unknown_in(planted) == ["kafka-nope"]


def test_a_make_target_in_a_comment_line_of_a_command_block_is_checked() -> None:
    """Only a comment after a command was read (``make demo  # = make setup``); a comment line of its
    own in a command block (``# then run make foo``) named a target no check read."""
    planted = "```bash\nmake setup\n# then run make kafka-nope, or make demo\n```\n"
    assert make_targets_unknown_in(planted) == ["kafka-nope"]
    planted = "```bash\n# make sure kafka is up, then run make demo to see it\n```\n"
    assert make_targets_unknown_in(planted) == []
    # Outside a command block a line starting with '#' is a heading, where "make" is a verb.
    assert make_targets_unknown_in("# How to make things better\n\n## Make it go\n") == []
