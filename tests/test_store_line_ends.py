"""An S3 bucket name is checked whole, up to its last character.

Before: ``re.match`` with ``^...$`` took a bucket name ending in a newline (``$`` matches before a
final "\\n"): ``load_manifest("s3://skuforge\\n")`` or ``skuforge evaluate --scenes`` opened a store
on a bucket name S3 does not allow, where a short or odd name is a ValueError at once.
"""

from __future__ import annotations

import pytest

from shared.store import check_store_uri, open_store, s3_location


def test_a_bucket_name_ending_in_a_newline_is_refused_when_the_store_is_opened() -> None:
    assert open_store("s3://skuforge", uri_from="the test").base_uri == "s3://skuforge"
    # The bucket's own check, whole: a URI holding a newline is refused before it (review 48, naming it).
    with pytest.raises(ValueError, match=r"invalid S3 bucket name 'skuforge\\n'"):
        s3_location("skuforge\n", "")
    with pytest.raises(ValueError, match=r"U\+000A at character 14.*\(from the test\)"):
        open_store("s3://skuforge\n", uri_from="the test")
    with pytest.raises(ValueError, match=r"U\+000A"):
        check_store_uri("s3://skuforge\n")
