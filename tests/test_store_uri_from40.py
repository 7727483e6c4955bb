"""An S3 failure names where its URI came from (review 40, after 715978a): a setting or a tool's option,
not always SKUFORGE_STORE_URI."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from shared.errors import TransientError
from shared.store import S3Store


def test_s3_answering_5xx_names_where_the_uri_came_from() -> None:
    # The only S3 failure of the store whose message did not: a scene library's or a model's outage
    # read as one of SKUFORGE_STORE_URI. moto cannot be made to answer 500: botocore's error after its
    # own retries is raised into the mapping, as tests/test_store.py does.
    store = S3Store("scenes", endpoint_url="http://127.0.0.1:1", uri_from="--scenes")
    answer: Any = {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}
    with pytest.raises(TransientError) as info, store._mapped_errors("s3://scenes/a.jpg"):
        raise ClientError(answer, "GetObject")
    assert str(info.value) == "S3 answered InternalError for s3://scenes/a.jpg (from --scenes)"
