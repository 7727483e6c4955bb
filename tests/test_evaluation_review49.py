"""`skuforge evaluate --scenes`: a refused URI is shown escaped, never as typed."""

from __future__ import annotations

import pytest

from services.trainstore.evaluation import EvaluateRefused, scene_files


@pytest.mark.parametrize("odd", ["\u202e", "\x1b[2J", "\n", "\u2028"])
def test_a_refused_scenes_uri_reaches_the_terminal_escaped(odd: str) -> None:
    """The refusal led with the URI raw: a bidi control reordered the line on the terminal, an escape
    sequence ran there, a newline started a line that read as another. check_store_uri names the
    character without echoing it; the '--scenes URI' before it now escapes it as well."""
    uri = f"file:///data/sce{odd}nes"
    with pytest.raises(EvaluateRefused) as refused:
        scene_files(uri)
    message = str(refused.value)
    assert odd not in message
    assert message.startswith("--scenes file:///data/sce\\")
    assert odd.encode("unicode_escape").decode("ascii") in message
