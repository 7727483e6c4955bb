"""The generation model's Triton contract: model names and tensors, shared by server and client.

One row of a batch is one variant: a reference photo, its product mask, the prompts, the variant's
seed, JSON parameters and an optional adapter id go in; one image, its expected mask, the JSON
parameters actually used, the adapter actually used and an error message (empty when the row
succeeded) come out. Rows fail alone: a row the backend refuses gets its message in ``error`` and
zero images, and the other rows of the batch are unaffected; so does every row of a request whose
size is out of 1 to ``MAX_SIZE_PX`` (2048) or differs between its rows (its images are 1 x 1), or
whose reference has more pixels than the server's ``SKUFORGE_MAX_IMAGE_PIXELS``, or that lacks a
required input (Triton counts inputs: an optional one in its place passes); so is a row with a text
input (prompt, own_names...) of more than ``MAX_TEXT_BYTES``. A row
the backend fails on (raises) is served again alone; if it fails alone too, or the backend answers it
wrongly (an image of another size than asked, parameters no JSON holds), ``error`` says so after
``BACKEND_ERROR_PREFIX``, or
after ``BACKEND_UNAVAILABLE_PREFIX`` when what failed is a store it reads, an adapter's copy its
model cache refuses or cannot hold (the operator's to fix), or the GPU memory another process took
(transient). A row out of GPU memory alone on a GPU no one else took
is a ``BACKEND_ERROR_PREFIX`` failure: retried a few times, then dead-lettered. An
empty reference or mask (a side of 0 px) never reaches the model: PyTriton fails on an empty tensor
and Triton answers the request INTERNAL, so the client refuses such a variant without sending it.
The client checks an answer's size as the server does: a server that answers an image or mask of
another size than asked, or parameters_used that are no JSON object (not skuforge's), fails the variant
as a backend error (``GeneratorFailed``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import numpy as np

MODEL_PREFIX = "skuforge_generator_"

# The most bytes of one text input of one row. CLIP reads 77 tokens of a prompt and the stage sends a
# few hundred bytes; a megabyte prompt from another client tied the tokenizer up for seconds a row.
MAX_TEXT_BYTES = 8192

# name, dtype, shape without the batch dimension (-1 = any)
INPUTS: tuple[tuple[str, type, tuple[int, ...]], ...] = (
    ("reference", np.uint8, (-1, -1, 3)),
    ("mask", np.uint8, (-1, -1)),
    ("prompt", bytes, (1,)),
    ("negative_prompt", bytes, (1,)),
    ("seed", np.int64, (1,)),  # any int64, negative too: one rule for every backend (seed_entropy)
    ("parameters", bytes, (1,)),  # JSON object
    ("adapter_id", bytes, (1,)),  # "" = choose by series
    ("series", bytes, (1,)),
    ("size", np.int32, (1,)),
)
# Inputs a request may leave out: an older stage does not send them, and the stage sends them only to a
# model that declares them (``TritonGenerator`` reads its metadata), so either side can roll out first.
OPTIONAL_INPUTS: tuple[tuple[str, type, tuple[int, ...]], ...] = (
    # JSON list of the SKU's other names (category, product name): no scene tagged like any of them.
    ("own_names", bytes, (1,)),
)
OUTPUTS: tuple[tuple[str, type, tuple[int, ...]], ...] = (
    ("image", np.uint8, (-1, -1, 3)),
    ("expected_mask", np.uint8, (-1, -1)),
    ("parameters_used", bytes, (1,)),  # JSON object
    ("adapter_used", bytes, (1,)),  # "" = none
    ("model_id", bytes, (1,)),  # the backend's model id, for lineage
    ("error", bytes, (1,)),  # "" = ok
)


# ``error`` of a row the backend failed on (an exception, not a refusal), even when served alone: the
# client raises it as a handler error, which the stage retries a few times and then dead-letters.
BACKEND_ERROR_PREFIX = "backend_error: "
# The backend could not serve the row *now* (its adapter registry or object store away, an adapter's
# cached copy another user could change, a model cache full or read-only): the stage retries it like
# Triton being away, never dead-letters it.
BACKEND_UNAVAILABLE_PREFIX = "backend_unavailable: "


# Refusals of the adapter a request gets (the backend's ``BadInput`` reasons), not of its photo: another
# photo would meet them again, and registering the adapter again may lift them.
ADAPTER_REFUSALS = frozenset({"adapter_unloadable", "adapter_base_mismatch", "adapter_checksum_mismatch"})


def model_name(backend: str) -> str:
    """The Triton model that serves ``backend`` (e.g. ``skuforge_generator_composite``)."""
    return MODEL_PREFIX + backend


@dataclass(frozen=True)
class VariantRequest:
    """What the stage asks for one variant (one Triton request of batch size 1)."""

    reference: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W uint8
    prompt: str
    negative_prompt: str
    seed: int
    parameters_json: str
    adapter_id: str | None
    series: str | None
    size: int
    own_names: tuple[str, ...] = ()  # category, product name: sent when the model declares own_names

    @functools.cached_property
    def digest(self) -> str:
        """A digest of everything the request sends: equal for the same variant asked again. Taken once
        per request: the client keys the answers it keeps by it, and the stage hands them back by it."""
        digest = hashlib.sha256()
        # The texts as one JSON list: joined with NUL, "a\0b" then "c" read as "a" then "b\0c". Held in
        # memory only (the answers a client keeps), so a new digest costs no stored data.
        texts = [
            self.prompt,
            self.negative_prompt,
            str(self.seed),
            self.parameters_json,
            self.adapter_id or "",
            self.series or "",
            str(self.size),
            *self.own_names,
        ]
        digest.update(json.dumps(texts).encode("utf-8"))
        for array in (self.reference, self.mask):
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class VariantResult:
    """What the model answered for one variant."""

    image: np.ndarray  # size x size x 3 uint8
    expected_mask: np.ndarray  # size x size uint8, 0/255
    parameters_json: str
    adapter_id: str | None
    model_id: str
