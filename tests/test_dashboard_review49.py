"""Review 49: the dashboard's legends read well with and without the chart's namespace/release labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from devstack.dashboard import PANELS, _legend, concrete, panel_expr, panel_legend
from devstack.prometheus import promtool
from schemas.envelope import clipped
from shared.captioning.prompts import _cut_at_word

# A compose series (no namespace/release) and a chart series of the same stage, as Prometheus stores them.
COMPOSE = {"stage": "gate", "outcome": "ok"}
CHART = {"namespace": "shop", "release": "a", "stage": "gate", "outcome": "ok"}
# What a compose series lacks: the chart's labels, and so the install label made of them.
NO_COMPOSE_LABELS = ("namespace", "release", "install")


def _selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"


def test_every_panel_legend_starts_with_the_install_only_when_the_series_has_one() -> None:
    """On compose every legend started with a bare "/" (the chart's two labels are empty there)."""
    for panel in PANELS:
        for query in panel.queries:
            legend = panel_legend(query)
            # Grafana fills a missing label with "": the install part must vanish, not leave a "/".
            labels = {name: "x" for name in re.findall(r"\{\{(\w+)\}\}", legend)}
            compose = _legend(legend, {k: v for k, v in labels.items() if k not in NO_COMPOSE_LABELS})
            assert not compose.startswith(("/", " ")), (panel.title, legend, compose)
            assert "{{namespace}}" not in legend and "{{release}}" not in legend, (panel.title, legend)


def test_the_query_itself_makes_the_install_label(promtool_bin: str, tmp_path: Path) -> None:
    """promtool evaluates the flow panel's query: a compose series gets no install label (legend
    "gate"), a chart series "shop/a " (legend "shop/a gate")."""
    (flow,) = PANELS[0].queries
    expr = concrete(panel_expr(flow))
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": _selector("skuforge_messages_total", COMPOSE), "values": "0+60x10"},
                    {"series": _selector("skuforge_messages_total", CHART), "values": "0+120x10"},
                ],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{stage="gate"}', "value": 1},
                            {
                                "labels": '{install="shop/a ",namespace="shop",release="a",stage="gate"}',
                                "value": 2,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "legend_test.yml"
    path.write_text(json.dumps(tests))  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    legend = panel_legend(flow)
    assert _legend(legend, {"stage": "gate"}) == "gate"
    assert _legend(legend, {"install": "shop/a ", "namespace": "shop", "release": "a", "stage": "gate"}) == (
        "shop/a gate"
    )


def test_promtool_sees_a_wrong_install_label(promtool_bin: str, tmp_path: Path) -> None:
    """The evaluation above can fail: the same route refuses a sample whose labels differ."""
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": _selector("skuforge_messages_total", COMPOSE), "values": "0+60x10"}
                ],
                "promql_expr_test": [
                    {
                        "expr": "sum by (stage) (rate(skuforge_messages_total[5m]))",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": '{install="/",stage="gate"}', "value": 1}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong.yml"
    path.write_text(json.dumps(tests))
    assert promtool("test", "rules", str(path)).returncode != 0


# The two cut-at-word helpers at their edges (they keep their own rules; only bugs are fixed).


@pytest.mark.parametrize("limit", [0, 1, 27, 63])
@pytest.mark.parametrize("at_word", [False, True])
def test_clipped_refuses_a_limit_below_its_floor(limit: int, at_word: bool) -> None:
    """Under the mark's own length a slice counted from the end: ``clipped("abc" * 20, 0)`` was 60
    characters, "... [88 more characters cut]" of a 60-character text (with ``at_word`` on a short text,
    an IndexError)."""
    with pytest.raises(ValueError, match=f"{limit} characters"):
        clipped("abc" * 20, limit, at_word=at_word)
    with pytest.raises(ValueError, match=f"{limit} characters"):
        clipped("abc", limit, at_word=at_word)


@pytest.mark.parametrize("at_word", [False, True])
def test_clipped_at_its_floor_and_on_blank_or_empty_text(at_word: bool) -> None:
    assert clipped("", 64, at_word=at_word) == ""
    assert clipped(" " * 64, 64, at_word=at_word) == " " * 64
    for text in (" " * 500, "x" * 500, "\U0001f600 " * 200):
        cut = clipped(text, 64, at_word=at_word)
        assert len(cut) <= 64 and cut.endswith(" more characters cut]"), cut
        kept = cut[: cut.index("... [")]
        assert text.startswith(kept) and f"[{len(text) - len(kept)} more" in cut


@pytest.mark.parametrize("at_word", [False, True])
def test_clipped_never_parts_a_letter_from_its_combining_mark(at_word: bool) -> None:
    """One long word of decomposed "é" (e and U+0301): the cut fell between the last e and its accent,
    and the message showed an "e" that was an "é"."""
    text = "e\u0301" * 300
    for limit in range(64, 80):
        cut = clipped(text, limit, at_word=at_word)
        kept = cut[: cut.index("... [")]
        assert len(cut) <= limit and kept.endswith("\u0301"), (limit, cut)
        assert f"[{len(text) - len(kept)} more" in cut


def test_cut_at_word_never_parts_a_letter_from_its_combining_mark() -> None:
    """A word longer than the limit is cut where it is, but not between a letter and its mark
    ("café" spelled e + U+0301, cut to 4, was "cafe")."""
    assert _cut_at_word("cafe\u0301", 4) == "caf"
    assert _cut_at_word("cafe\u0301", 5) == "cafe\u0301"
    assert _cut_at_word("e\u0301\u0323x", 2) == ""  # two marks on one letter: the whole letter or none
    assert _cut_at_word("ab cafe\u0301", 6) == "ab"  # at a word, as before


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("", 0, ""),
        ("", 1, ""),
        ("a", 0, ""),
        ("a", 1, "a"),
        ("ab", 1, "a"),
        ("   ", 1, ""),
        ("abc def", 3, "abc"),
        ("abc def", 4, "abc"),
        ("\U0001f600\U0001f600 a", 1, "\U0001f600"),  # a character above the BMP counts once
        ("a b", 3, "a b"),
    ],
)
def test_cut_at_word_at_its_edges(text: str, limit: int, expected: str) -> None:
    assert _cut_at_word(text, limit) == expected
