"""More of what the docs say, held to the code and the results files (tests/test_docs_truth.py has the
commands, links, variables, make targets and extras): every repository path they name exists, and a
folder whose README has a file table has each of its files in it; every test, metric and
``SKUFORGE_*`` default they quote is the code's; a ``skuforge`` command in a fenced block's comment
parses; and the headline figures of README and docs/evaluation.md are the ones their results files
hold, a results-file field cited beside a date is of the run that file holds, and every identifier
they quote (a reason code, a function, a constant, a results field) exists. Each check is shown
to fail on a planted mistake.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docs import DOCS, ROOT, after_prefix, check_parses, doc_argv

DOC_TEXTS = {doc: doc.read_text(encoding="utf-8") for doc in DOCS}
DOC_IDS = [f"{doc.relative_to(ROOT)}" for doc in DOCS]
RESULTS = ROOT / "bench" / "results"

# A repository path: under one of the repository's own folders (not var/, which runs fill).
REPO_PATH = re.compile(
    r"(?<![\w/.$<-])((?:bench|deploy|docs|samples|schemas|shared|services|devstack|skuforge_cli|tests|\.ci)"
    r"/[\w./*-]*[\w*/])"
)
# Made by `make setup` (Maven's jars), not committed.
MADE_BY_SETUP = {"deploy/kafka/lib/"}


def paths_missing_in(text: str) -> list[str]:
    """Repository paths ``text`` names (a glob must match something) that do not exist."""
    missing = []
    for path in dict.fromkeys(REPO_PATH.findall(text)):
        if path in MADE_BY_SETUP:
            continue
        exists = any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
        if not exists:
            missing.append(path)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_repository_path_a_doc_names_exists(doc: Path) -> None:
    missing = paths_missing_in(DOC_TEXTS[doc])
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_a_path_that_does_not_exist_is_caught() -> None:
    text = "Figures: `bench/results/captioner.json`, `bench/results/captioner-real.json`; see bench/nope.py."
    assert paths_missing_in(text) == ["bench/results/captioner-real.json", "bench/nope.py"]
    assert paths_missing_in("`bench/results/*.json`, `bench/results/*.csv`") == ["bench/results/*.csv"]


# A README that describes its folder file by file: a table whose first column is the file.
FILE_TABLE = re.compile(r"^\| file[^|]* \|", flags=re.MULTILINE)
NOT_DESCRIBED = {"README.md", "LICENSE", "__pycache__"}


def files_left_out_of(readme: Path, text: str) -> list[str]:
    """Entries of ``readme``'s folder (files and folders, not recursively) its text never names in
    backticks, alone or as the start of a path (``masks/<id>.png`` names ``masks``)."""
    named = {token.split("/")[0] for token in re.findall(r"`([^`\s]+)`", text)}
    return sorted(
        entry.name
        for entry in readme.parent.iterdir()
        if entry.name not in NOT_DESCRIBED and not entry.name.startswith(".") and entry.name not in named
    )


FILE_TABLE_READMES = [doc for doc in DOCS if doc.name == "README.md" and FILE_TABLE.search(DOC_TEXTS[doc])]


@pytest.mark.parametrize(
    "readme", FILE_TABLE_READMES, ids=[f"{doc.relative_to(ROOT)}" for doc in FILE_TABLE_READMES]
)
def test_a_readme_with_a_file_table_names_every_file_beside_it(readme: Path) -> None:
    left_out = files_left_out_of(readme, DOC_TEXTS[readme])
    assert not left_out, f"{readme.relative_to(ROOT)} describes its folder but not {left_out}"


def test_a_file_a_readme_table_leaves_out_is_caught() -> None:
    readme = ROOT / "deploy" / "schemas" / "README.md"
    text = DOC_TEXTS[readme].replace("`compose-spec.json`", "the Compose schema")
    assert files_left_out_of(readme, text) == ["compose-spec.json"]


def _test_names() -> tuple[set[str], set[str]]:
    """The test functions and classes of tests/, and its test files (by name and by path)."""
    names: set[str] = set()
    files: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        files |= {path.name, f"{path.relative_to(ROOT)}"}
        for function, cls in re.findall(
            r"^\s*(?:async )?def (test_\w+)|^class (Test\w+)", path.read_text(), re.M
        ):
            names.add(function or cls)
    return names, files


TEST_NAMES, TEST_FILES = _test_names()


def cited_tests_missing_in(text: str) -> list[str]:
    """Tests (``test_x``, ``test_file.py``, ``tests/test_file.py::test_x``) ``text`` names that do not
    exist."""
    missing = []
    for file, name in re.findall(r"(?<![\w/])(?:((?:tests/)?test_\w+\.py)(?:::)?)?(test_\w+)?", text):
        if file and file not in TEST_FILES:
            missing.append(file)
        if name and name not in TEST_NAMES:
            missing.append(name)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_test_a_doc_cites_exists(doc: Path) -> None:
    missing = cited_tests_missing_in(DOC_TEXTS[doc])
    assert not missing, f"{doc.relative_to(ROOT)} cites tests that do not exist: {missing}"


def test_a_test_that_does_not_exist_is_caught() -> None:
    text = "`tests/test_runtime.py::test_no_such_test`, `test_nowhere.py`, "
    text += "`test_sigterm_finishes_commits_and_exits_zero`"
    assert cited_tests_missing_in(text) == ["test_no_such_test", "test_nowhere.py"]


def _names_not_metrics() -> set[str]:
    """``skuforge_*`` names the docs give that are not metrics: Triton's model names, Label Studio's
    task field, the CLI package."""
    from typing import get_args

    from schemas.events import Backend
    from services.generator.protocol import model_name

    return {model_name(backend) for backend in get_args(Backend)} | {"skuforge_shown", "skuforge_cli"}


def metrics_unknown_in(text: str) -> list[str]:
    """``skuforge_*`` metrics ``text`` names that no service serves (a histogram's ``_bucket``,
    ``_count`` and ``_sum`` series are its own)."""
    from devstack.metrics_doc import catalogue

    served = {doc.name for doc in catalogue()}
    not_metrics = _names_not_metrics()
    unknown = []
    for name in dict.fromkeys(re.findall(r"(?<![\w<])(skuforge_[a-z0-9_]*[a-z0-9])(?![\w<])", text)):
        series = re.sub(r"_(bucket|count|sum)$", "", name)
        if name not in served and series not in served and name not in not_metrics:
            unknown.append(name)
    return unknown


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_metric_a_doc_names_is_served(doc: Path) -> None:
    unknown = metrics_unknown_in(DOC_TEXTS[doc])
    assert not unknown, f"{doc.relative_to(ROOT)} names metrics no service serves: {unknown}"


def test_a_metric_no_service_serves_is_caught() -> None:
    text = "`skuforge_gate_iou_bucket`, `skuforge_model_seconds_count`, `skuforge_gate_ious` on Triton's "
    text += "`skuforge_generator_composite`"
    assert metrics_unknown_in(text) == ["skuforge_gate_ious"]


# "`SKUFORGE_X` (10 s)", "`SKUFORGE_X` (default 1.0)", "`SKUFORGE_X` (30 by default; ...)", and set off
# by commas: "`SKUFORGE_X`, 300 s, in ...", "`SKUFORGE_X`, a minute, on" (review 46: these went unread).
STATED_DEFAULT = re.compile(
    r"`(SKUFORGE_[A-Z0-9_]+)`(?:,? \(|, )(?:default |by default )?(-?\d[\d,.]*|an?|(?<=default )`[^`]+`)"
    r"(?: ?(ms|s|seconds?|minutes?|hours?|days?))?(?: by default)?[;),]"
)
SECONDS_IN = {"ms": 0.001, "s": 1.0, "second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
SECONDS_IN |= {f"{unit}s": seconds for unit, seconds in SECONDS_IN.items() if unit not in ("ms", "s")}
# The unit a setting's name gives its value, in seconds.
NAME_UNIT_S = {"_MS": 0.001, "_S": 1.0, "_DAYS": 86400.0}


def _setting_defaults() -> dict[str, object]:
    from shared.config import ENV_PREFIX
    from skuforge_cli.main import SETTINGS_MODELS

    return {
        ENV_PREFIX + name.upper(): field.default
        for model in SETTINGS_MODELS
        for name, field in model.model_fields.items()
    }


def misstated_defaults_in(text: str) -> list[str]:
    """Settings whose default ``text`` states beside the name (a number, with a unit of time where the
    name has one, or a quoted value) other than the settings model's."""
    defaults = _setting_defaults()
    wrong = []
    for name, said, unit in STATED_DEFAULT.findall(text):
        if name not in defaults:
            continue  # a tool's variable, not a setting (test_docs_truth checks it is read)
        default = defaults[name]
        if said.startswith("`"):
            if default is None and "<" in said:
                continue  # unset: one derived from another setting (`<store>/adapters`)
            if said.strip("`") != str(default):
                wrong.append(f"{name}: says {said}, the default is {default!r}")
            continue
        if said in ("a", "an") and not unit:
            continue  # "(a URI)": words, not a value
        value = 1.0 if said in ("a", "an") else float(said.replace(",", ""))
        name_unit_s = next((seconds for end, seconds in NAME_UNIT_S.items() if name.endswith(end)), None)
        if unit and name_unit_s is not None:
            value *= SECONDS_IN[unit] / name_unit_s
        if not isinstance(default, (int, float)) or abs(float(default) - value) > 1e-9:
            wrong.append(f"{name}: says {said}{' ' + unit if unit else ''}, the default is {default!r}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_a_setting_default_a_doc_states_is_the_settings_default(doc: Path) -> None:
    wrong = misstated_defaults_in(DOC_TEXTS[doc])
    assert not wrong, f"{doc.relative_to(ROOT)} misstates defaults: {wrong}"


def test_a_misstated_setting_default_is_caught() -> None:
    right = (
        "`SKUFORGE_SESSION_TIMEOUT_MS` (10 s), `SKUFORGE_CONSOLE_IDLE_S` (15 minutes), "
        "`SKUFORGE_MODEL_CACHE_UNUSED_DAYS` (30 by default; 0 keeps all), "
        "`SKUFORGE_TRAINSTORE_PREFIX` (default `trainstore`), `SKUFORGE_KAFKA_PORT` (9092)."
    )
    assert misstated_defaults_in(right) == []
    wrong = "`SKUFORGE_SESSION_TIMEOUT_MS` (30 s), `SKUFORGE_TRAINSTORE_SWEEP_GRACE_S` (2 days) and "
    wrong += "`SKUFORGE_TRAINSTORE_PREFIX` (default `store`);"
    assert misstated_defaults_in(wrong) == [
        "SKUFORGE_SESSION_TIMEOUT_MS: says 30 s, the default is 10000",
        "SKUFORGE_TRAINSTORE_SWEEP_GRACE_S: says 2 days, the default is 86400.0",
        "SKUFORGE_TRAINSTORE_PREFIX: says `store`, the default is 'trainstore'",
    ]


def test_a_misstated_default_set_off_by_commas_is_caught() -> None:
    """docs/deploy.md writes defaults between commas ("`SKUFORGE_FLUSH_TIMEOUT_S`, 60 s, for an
    acknowledgement"; "`SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S`, a minute, on"), and the check
    read only those in brackets: these were never compared with the settings."""
    right = (
        "(`SKUFORGE_GENERATION_TRITON_TIMEOUT_S`, 300 s, in the chart), `SKUFORGE_TOPIC_PARTITIONS`, 6), "
        "`SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S`, a minute, on; `SKUFORGE_TRAINSTORE_SWEEP_GRACE_S` "
        "(a day), `SKUFORGE_CAPTIONER_FILL_DENTS_SHARE`, 0 turns it off, `SKUFORGE_DIFFUSION_MODEL` (a URI), "
        "`SKUFORGE_DIFFUSION_ADAPTERS_URI`, default `<store>/adapters`),"
    )
    assert misstated_defaults_in(right) == []
    wrong = "`SKUFORGE_FLUSH_TIMEOUT_S`, 30 s, for it; "
    wrong += "`SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S`, an hour, on"
    assert misstated_defaults_in(wrong) == [
        "SKUFORGE_FLUSH_TIMEOUT_S: says 30 s, the default is 60.0",
        "SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S: says an hour, the default is 60.0",
    ]


def _fenced_comment_commands() -> Iterator[tuple[str, str]]:
    """(``file:line``, the command) of each ``skuforge ...`` a fenced block's ``#`` comment shows
    (``# or: skuforge serve generator --backend diffusion``): up to the end of the comment or a ``;``."""
    for doc, text in DOC_TEXTS.items():
        fenced = False
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip().startswith("```"):
                fenced = not fenced
            elif fenced and " #" in line:
                comment = line.split(" #", 1)[1]
                for found in re.finditer(r"(?:\.venv/bin/)?skuforge [a-z][^;`()]*", comment):
                    yield f"{doc.relative_to(ROOT)}:{number}", found.group(0).strip().rstrip(",.")


COMMENT_COMMANDS = list(_fenced_comment_commands())


@pytest.mark.parametrize(("where", "command"), COMMENT_COMMANDS, ids=[w for w, _ in COMMENT_COMMANDS])
def test_a_command_in_a_fenced_comment_parses(
    where: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    after = after_prefix(command)
    check_parses(where, command, doc_argv(after), False, monkeypatch)


def test_a_fenced_comment_command_with_an_unknown_option_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AssertionError, match=r"has no option \[.--backends.\]"):
        check_parses(
            "planted",
            "skuforge serve generator --backends x",
            ["serve", "generator", "--backends", "x"],
            False,
            monkeypatch,
        )


def _number(text: str) -> float:
    return float(text.replace("\u2212", "-").replace(",", ""))


def readme_matting_figures_misstated(readme: str) -> list[str]:
    """README's matting headline ("On 116 real product photos its mean IoU is 0.866 against the official
    model's 0.821 (int8 0.862), 0.801 against 0.739 on in-store photos, and 43 of 45 catalogue photos
    reach IoU 0.9") against bench/results/matting_real.json."""
    figures = json.loads((RESULTS / "matting_real.json").read_text(encoding="utf-8"))
    said = re.search(
        r"On\s+(\d+)\s+real product photos its mean IoU is ([\d.]+) against the official model's ([\d.]+)\s+"
        r"\(int8 ([\d.]+)\), ([\d.]+)\s+against ([\d.]+) on in-store photos, and (\d+) of (\d+) catalogue\s+"
        r"photos reach IoU 0\.9",
        readme,
    )
    assert said, "README's matting headline moved: update this test's pattern"
    n_real, ours, official, int8, instore, instore_official, reach, n_catalogue = said.groups()
    expected = {
        "photos": (int(n_real), figures["n_real"]),
        "ours": (float(ours), round(figures["real_iou_ours"], 3)),
        "official": (float(official), round(figures["real_iou_official"], 3)),
        "int8": (float(int8), round(figures["real_iou_ours_int8"], 3)),
        "in-store ours": (float(instore), round(figures["instore_iou_ours"], 3)),
        "in-store official": (float(instore_official), round(figures["instore_iou_official"], 3)),
        "catalogue at 0.9": (
            int(reach),
            round(figures["catalogue_frac_ge_090_ours"] * figures["n_catalogue"]),
        ),
        "catalogue photos": (int(n_catalogue), figures["n_catalogue"]),
    }
    return [f"{what}: says {s}, the file {f}" for what, (s, f) in expected.items() if abs(s - f) > 1e-9]


def test_readme_matting_headline_is_the_results_file() -> None:
    wrong = readme_matting_figures_misstated(DOC_TEXTS[ROOT / "README.md"])
    assert not wrong, f"README's matting figures are not bench/results/matting_real.json's: {wrong}"


def test_a_stale_matting_headline_is_caught() -> None:
    readme = DOC_TEXTS[ROOT / "README.md"].replace(
        "against the official model's 0.821", "against the official model's 0.822"
    )
    assert readme_matting_figures_misstated(readme) == ["official: says 0.822, the file 0.821"]


def _percent(value: float) -> float:
    return round(100 * value, 1)


def _close(said: float, value: float) -> bool:
    """``said`` is ``value`` (a fraction) in percent or points, to the one decimal written (a tie may
    round either way)."""
    return abs(said - 100 * value) <= 0.05 + 1e-9


ARMS = [
    ("A", "real_only_top1"),
    ("A'", "real_plus_classic_top1"),
    ("B", "real_plus_synthetic_top1"),
    ("B'", "real_plus_classic_plus_synthetic_top1"),
    ("C", "synthetic_only_top1"),
    ("B-A", "gain_top1"),
    ("B'-A'", "gain_over_classic_top1"),
    ("hurt", "frac_skus_worse_by_10pt"),
]


def evaluation_results_misstated(evaluation: str, readme: str) -> list[str]:
    """docs/evaluation.md's Results table (k = 0, 1, 3) and README's classifier headline against
    bench/results/augment.json."""
    figures = json.loads((RESULTS / "augment.json").read_text(encoding="utf-8"))
    results = evaluation.split("\n### Results\n", 1)[1]
    wrong = []
    for k in (0, 1, 3):
        row = re.search(rf"^\| {k} \|(.*)\|$", results, flags=re.MULTILINE)
        assert row, f"docs/evaluation.md's Results table has no row k = {k}"
        cells = [_number(cell.strip(" *%+")) for cell in row.group(1).split("|")]
        wrong += [
            f"k={k} {arm}: says {said}, the file {_percent(figures[f'k{k}'][key])}"
            for (arm, key), said in zip(ARMS, cells, strict=True)
            if not _close(said, figures[f"k{k}"][key])
        ]
    said = re.search(
        r"goes from \*\*([\d.]+)%\*\* \(real only\) to \*\*([\d.]+)%\*\* with skuforge's images "
        r"\(\+([\d.]+) points\), and from ([\d.]+)%\s+\(classic augmentation\) to \*\*([\d.]+)%\*\* "
        r"with both \(\+([\d.]+);.*?packaged\s+products gain \+([\d.]+) over classic augmentation, "
        r"vegetables \+([\d.]+), loose fruit ([\u2212-][\d.]+)\); ([\d.]+)% of the\s+products lose 10 points",
        readme,
        flags=re.DOTALL,
    )
    assert said, "README's classifier headline moved: update this test's pattern"
    k1, groups = figures["k1"], figures["by_group"]["k1"]
    headline = [
        ("A", k1["real_only_top1"]),
        ("B", k1["real_plus_synthetic_top1"]),
        ("B-A", k1["gain_top1"]),
        ("A'", k1["real_plus_classic_top1"]),
        ("B'", k1["real_plus_classic_plus_synthetic_top1"]),
        ("B'-A'", k1["gain_over_classic_top1"]),
        ("packaged B'-A'", groups["Packages"]["gain_over_classic_top1"]),
        ("vegetables B'-A'", groups["Vegetables"]["gain_over_classic_top1"]),
        ("fruit B'-A'", groups["Fruit"]["gain_over_classic_top1"]),
        ("hurt", k1["frac_skus_worse_by_10pt"]),
    ]
    wrong += [
        f"README {what}: says {text}, the file {_percent(value)}"
        for (what, value), text in zip(headline, said.groups(), strict=True)
        if not _close(_number(text), value)
    ]
    return wrong


def test_the_classifier_figures_are_the_results_file() -> None:
    wrong = evaluation_results_misstated(
        DOC_TEXTS[ROOT / "docs" / "evaluation.md"], DOC_TEXTS[ROOT / "README.md"]
    )
    assert not wrong, f"the classifier figures are not bench/results/augment.json's: {wrong}"


def test_a_stale_classifier_figure_is_caught() -> None:
    evaluation = DOC_TEXTS[ROOT / "docs" / "evaluation.md"].replace("| 3 | 57.9% |", "| 3 | 58.9% |")
    readme = DOC_TEXTS[ROOT / "README.md"].replace("vegetables +1.2", "vegetables +2.1")
    assert evaluation_results_misstated(evaluation, readme) == [
        "k=3 A: says 58.9, the file 57.9",
        "README vegetables B'-A': says 2.1, the file 1.2",
    ]


def _fields_and_dates(document: object, fields: set[str], dates: set[str]) -> None:
    """The keys of a results file at every depth, and every date its strings carry (measured_at, notes)."""
    if isinstance(document, dict):
        for key, value in document.items():
            fields.add(key)
            _fields_and_dates(value, fields, dates)
    elif isinstance(document, list):
        for value in document:
            _fields_and_dates(value, fields, dates)
    elif isinstance(document, str):
        dates.update(re.findall(r"\d{4}-\d{2}-\d{2}", document))


def _parentheses(text: str) -> Iterator[str]:
    """The text of each innermost-first parenthesis of ``text``, its own nested parentheses cut out."""
    opened: list[int] = []
    for index, char in enumerate(text):
        if char == "(":
            opened.append(index)
        elif char == ")" and opened:
            yield re.sub(r"\([^()]*\)", "", text[opened.pop() + 1 : index])


def dated_citations_of_other_runs(text: str) -> list[str]:
    """Results-file fields (``real.packaging_misses``) cited in a parenthesis beside a date the file does
    not carry: figures of an earlier run attributed to the file, which holds a later run's. A section
    (``#`` heading to heading) cites the files of ``bench/results/`` it names."""
    wrong = []
    for section in re.split(r"\n(?=#+ )", text):
        names = set(re.findall(r"bench/results/([\w.-]+\.json)", section))
        fields: set[str] = set()
        dates: set[str] = set()
        for name in names:
            _fields_and_dates(json.loads((RESULTS / name).read_text(encoding="utf-8")), fields, dates)
        for inner in _parentheses(section):
            cited = [
                token
                for token in re.findall(r"`([a-z][a-z0-9_.-]*)`", inner)
                if ("_" in token or "." in token) and all(part in fields for part in token.split("."))
            ]
            other = [date for date in re.findall(r"\d{4}-\d{2}-\d{2}", inner) if date not in dates]
            if cited and other:
                wrong.append(f"{cited} cited for {other}, a run {sorted(names)} do not hold")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_a_results_field_a_doc_cites_with_a_date_is_of_that_files_run(doc: Path) -> None:
    wrong = dated_citations_of_other_runs(DOC_TEXTS[doc])
    assert not wrong, f"{doc.relative_to(ROOT)}: {wrong}"


def test_a_results_field_cited_for_an_earlier_run_is_caught() -> None:
    # "Now" is the run the committed file holds, whenever the bench was last run.
    held = json.loads((RESULTS / "captioner.json").read_text(encoding="utf-8"))["real"]["measured_at"][:10]
    text = "## Real\n\nFigures in `bench/results/captioner.json`. The misses of the run before "
    text += f"(2026-11-30, `real.packaging_misses`): two cartons. Now ({held}, `real.colour_misses`).\n"
    assert dated_citations_of_other_runs(text) == [
        "['real.packaging_misses'] cited for ['2026-11-30'], a run ['captioner.json'] do not hold"
    ]


# Where a name the docs quote may come from: the code, its configuration and templates, the tests,
# the results files (their field names), the chart.
CODE_FOLDERS = ("schemas", "shared", "services", "devstack", "skuforge_cli", "bench", "deploy", "tests")
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".tpl", ".json", ".html", ".js", ".toml", ".template", ".sh"}
# Names the docs quote from outside the repository, or as an example.
FOREIGN_NAMES = {
    "ensure_coordinator_ready",  # kafka-python's coordinator loop (docs/deploy.md, a known client issue)
    "read_committed",  # Kafka's consumer isolation level
    "r58_0000",  # an example name of a matting pairs file (`--roi`, catalogue seed 58)
}
# A backticked identifier: snake_case, CamelCase or UPPER_CASE (one word or more), perhaps called.
CODE_NAME = re.compile(
    r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+|[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"
    r"(?:\(\))?(?:\{[^}`]*\})?`"
)


def _code_text() -> str:
    """The text names may come from; not the docs tests, whose planted names would count."""
    paths = [ROOT / name for name in ("Makefile", "Dockerfile", "pyproject.toml")]
    for folder in CODE_FOLDERS:
        paths += [
            path
            for path in (ROOT / folder).rglob("*")
            if path.suffix in CODE_SUFFIXES and not path.name.startswith("test_docs")
        ]
    return "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in paths if path.is_file())


CODE_WORDS = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", _code_text()))


def code_names_unknown_in(text: str) -> list[str]:
    """Identifiers ``text`` quotes (reason codes, functions, classes, constants, results fields) that
    are no word of the code, configuration, tests or results files: renamed, or never there. The
    ``SKUFORGE_*`` variables are test_docs_truth's."""
    names = dict.fromkeys(name for name in CODE_NAME.findall(text) if not name.startswith("SKUFORGE_"))
    # A table under a header naming the prefix ("default (`SKUFORGE_GATE_*`)") gives a setting's rest.
    settings = _setting_defaults()
    return [
        name
        for name in names
        if name not in CODE_WORDS
        and name not in FOREIGN_NAMES
        and not any(setting.endswith(f"_{name}") for setting in settings)
    ]


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_every_code_name_a_doc_quotes_exists(doc: Path) -> None:
    unknown = code_names_unknown_in(DOC_TEXTS[doc])
    assert not unknown, f"{doc.relative_to(ROOT)} quotes names found nowhere in the code: {unknown}"


def test_a_renamed_code_name_is_caught() -> None:
    text = "dead-lettered as `object_missing` or `objects_missing`, by `ObjectStore` or `ObjectStores`, "
    text += "below `MAX_OUTPUT_RECORD_BYTES` or `MAX_OUTPUT_BYTES`; `skuforge_dlq_total{reason}`; `IOU_MIN`"
    assert code_names_unknown_in(text) == ["objects_missing", "ObjectStores", "MAX_OUTPUT_BYTES"]
