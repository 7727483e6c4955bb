"""The optional vision-language backend: BLIP (transformers) writes one sentence per photo.

Weights are never fetched from a hub: the model is a directory in ``save_pretrained`` layout
(``config.json``, weights, processor and tokenizer files), given as a local path or as an
``s3://`` / ``file://`` URI whose objects are downloaded through the object store into a local
cache first. Loading uses ``local_files_only=True``. Decoding never samples, so the same photos give
the same sentences: greedy, or a beam search of the ``num_beams`` the folder's ``generation_config.json``
sets; one asking for sampling or several sentences a photo is refused at load::

    captioner = open_vlm("s3://models/blip-base", cache_dir=None, threads=2, use_gpu=False,
                         uri_from="SKUFORGE_CAPTIONER_VLM_MODEL")   # what an S3 refusal names
    captioner.describe([image, ...])     # ["a red can on a shelf", ...], one per image, in order

The sentence only adds to the attribute caption (``prompts.merge_sentence``): colours and shape
stay those measured on the mask.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

from PIL import Image

from shared.captioning.prompts import plain_spelling
from shared.errors import BadInput
from shared.model_cache import COMPLETE_MARKER, DEFAULT_UNUSED_DAYS, fetch_directory
from shared.model_cache import cache_dir as cache_path
from shared.store import ObjectStore

__all__ = ["VlmCaptioner", "VlmModelError", "fetch_model_dir", "open_vlm"]


class VlmModelError(Exception):
    """The configured BLIP directory is missing, incomplete or not loadable, or a call of it returned
    other than one sentence per image."""


def fetch_model_dir(
    uri: str,
    cache_dir: Path | str | None = None,
    *,
    store: ObjectStore | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    cache_unused_days: float = DEFAULT_UNUSED_DAYS,
    uri_from: str,
) -> Path:
    """Copy the BLIP directory ``uri`` into the local model cache once (``shared/model_cache.py``).

    Returns the local directory; a URI without a ``config.json`` is not a save_pretrained BLIP
    directory, and a cache that cannot be written is no place to copy it: both raise ``VlmModelError``.
    ``uri_from`` is the setting ``uri`` came from, which an S3 refusal says to check (no default: one,
    SKUFORGE_STORE_URI, was blamed for models a caller's setting had named).
    """
    try:
        return fetch_directory(
            uri,
            cache_dir,
            store=store,
            s3_endpoint_url=s3_endpoint_url,
            s3_region=s3_region,
            required_file="config.json",
            unused_days=cache_unused_days,
            uri_from=uri_from,
        )
    except (ValueError, BadInput) as exc:
        raise VlmModelError(f"cannot open the BLIP model directory {uri!r}: {exc}") from exc
    except OSError as exc:  # full, a read-only /tmp, a cache path through a file: was a traceback at start-up
        raise VlmModelError(
            f"cannot copy the BLIP model directory {uri!r} into the model cache ({cache_path(cache_dir)}): "
            f"{exc}; free room there, or point SKUFORGE_CAPTIONER_VLM_CACHE_DIR at a folder this user can "
            "write"
        ) from exc


def _directory_digest(directory: Path) -> str:
    """sha256 over the directory's file names and bytes, for the captioner id (lineage)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class VlmCaptioner:
    """A BLIP captioning model loaded from a local directory; ``describe`` runs one batch, without
    sampling."""

    def __init__(
        self,
        directory: Path | str,
        *,
        prompt: str = "a photo of",
        max_new_tokens: int = 30,
        threads: int = 2,
        use_gpu: bool = False,
        name: str | None = None,
    ) -> None:
        try:
            import torch
            from transformers import BlipForConditionalGeneration, BlipProcessor
            from transformers.utils import logging as hf_logging
        except ImportError as exc:  # a CPU install without the extra: was a traceback at start-up
            raise VlmModelError(
                f"SKUFORGE_CAPTIONER_BACKEND=vlm needs torch and transformers: pip install "
                f"'skuforge[diffusion]' ({exc})"
            ) from exc

        path = Path(directory)
        if not (path / "config.json").is_file():
            raise VlmModelError(
                f"no BLIP model at {path}: expected a save_pretrained directory with config.json "
                "(SKUFORGE_CAPTIONER_VLM_MODEL takes a local directory or an s3:// or file:// URI)"
            )
        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VlmModelError(f"{path / 'config.json'} does not read as JSON: {exc}") from exc
        if not isinstance(config, dict) or config.get("model_type") != "blip":
            kind = config.get("model_type") if isinstance(config, dict) else None
            raise VlmModelError(
                f"{path} holds a {kind or 'untyped'} model, not BLIP (config.json model_type)"
            )
        generation_config = path / "generation_config.json"
        self.num_beams = _num_beams(generation_config, _decoding_asked(generation_config))
        try:
            self.processor: Any = BlipProcessor.from_pretrained(path, local_files_only=True)
            model: Any = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # a torn safetensors file or a mismatched shape raise
            # their own types (SafetensorError, RuntimeError): a traceback at start-up said less.
            raise VlmModelError(
                f"transformers cannot load BLIP from {path}: {type(exc).__name__}: {exc}"
            ) from exc
        self.model = model.to(self.device).eval()
        self.prompt = prompt.strip()
        self.max_new_tokens = max_new_tokens
        # The prompt and the sentence share the text model's positions: past them every SKU raised
        # IndexError in generate() and was dead-lettered as a handler error.
        positions = int(getattr(model.config.text_config, "max_position_embeddings", 0) or 0)
        prompt_tokens = len(self.processor.tokenizer(self.prompt)["input_ids"]) if self.prompt else 1
        if positions and prompt_tokens + max_new_tokens > positions:
            raise VlmModelError(
                f"the prompt ({prompt_tokens} tokens) and SKUFORGE_CAPTIONER_VLM_MAX_NEW_TOKENS "
                f"({max_new_tokens}) exceed the {positions} text positions of the BLIP model at {path}"
            )
        self.model_id = f"blip:{name or path.name}@sha256:{_directory_digest(path)[:12]}"

    def describe(self, images: Sequence[Image.Image]) -> list[str]:
        """One sentence per image, in order; one batched ``generate`` call (greedy, or of ``num_beams``
        beams). Other than one sentence per image is a ``VlmModelError``."""
        import torch

        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        if self.prompt:
            inputs = self.processor(images=rgb, text=[self.prompt] * len(rgb), return_tensors="pt")
        else:
            inputs = self.processor(images=rgb, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        # num_beams passed as read: transformers' BLIP hands its text decoder none of the folder's
        # generation_config.json, so a folder's num_beams was ignored there as well as here.
        with torch.inference_mode():
            ids = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
            )
        sentences = self.processor.batch_decode(ids, skip_special_tokens=True)
        if len(sentences) != len(images):
            # A generate that folded or fixed its batch: the captioner, zipping sentences with photos,
            # failed in next() with a bare StopIteration, or gave a photo another's sentence.
            raise VlmModelError(
                f"{self.model_id} returned {len(sentences)} sentences for {len(images)} images; "
                "BLIP returns one per image"
            )
        return [_without_prompt(" ".join(str(s).split()), self.prompt) for s in sentences]


# What a generation_config.json may not ask of the captioner, and what it decodes with instead.
_GREEDY = {"do_sample": False, "num_return_sequences": 1}


def _decoding_asked(path: Path) -> dict[str, Any]:
    """The folder's ``generation_config.json`` and what it asks (nothing when there is none);
    ``VlmModelError`` for one that asks for sampling or several sentences a photo. Neither can be
    applied honestly: the captioner writes one sentence per photo, and the same photos must give the
    same sentences (a re-run SKU, the same event). ``describe`` overruled them without a word (or
    transformers refused in its own words, naming no file)."""
    if not path.is_file():
        return {}
    try:
        asked = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VlmModelError(f"{path} does not read as JSON: {exc}") from exc
    asked = asked if isinstance(asked, dict) else {}
    for key, greedy in _GREEDY.items():
        value = asked.get(key)
        if value is not None and value != greedy:
            raise VlmModelError(
                f"{path}: {key} is {json.dumps(value)}; the captioner writes one deterministic sentence "
                f"per photo (no sampling), so set it to {json.dumps(greedy)} or remove it"
            )
    return asked


def _num_beams(path: Path, asked: dict[str, Any]) -> int:
    """The beams the folder's ``generation_config.json`` asks for (1, greedy, when it names none): a
    beam search is as deterministic as greedy decoding. ``describe`` decoded with one beam whatever
    the folder said; a value that is not a whole number from 1, written as an integer, is
    ``VlmModelError``."""
    beams = asked.get("num_beams", 1)
    if beams is None:
        return 1
    if isinstance(beams, float) and beams.is_integer() and beams >= 1:
        # 4.0 is a whole number: "set it to a whole number" did not say what to change.
        raise VlmModelError(
            f"{path}: num_beams is {json.dumps(beams)}; write it as an integer, {int(beams)} "
            f"(not {json.dumps(beams)}), or remove it"
        )
    if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
        raise VlmModelError(
            f"{path}: num_beams is {json.dumps(beams)}; set it to a whole number from 1 or remove it"
        )
    return beams


# A prompt's words, and each other mark on its own ("_" too), as BLIP's tokenizer splits them.
_PROMPT_TOKEN = re.compile(r"[^\W_]+|\S")


def _without_prompt(sentence: str, prompt: str) -> str:
    """BLIP echoes a conditional prompt; the caption already says 'a photo of', so drop it.

    Only as whole words: the prompt "a photo" cut "a photograph of a can" to "graph of a can". Space
    beside punctuation does not count: BLIP's tokenizer decodes "a close-up photo," as
    "a close - up photo ,", and the echo stayed in the caption. Nor do accents: its uncased tokenizer
    strips them, and "une photo de crème" came back "une photo de creme".
    """
    tokens = _PROMPT_TOKEN.findall(plain_spelling(unicodedata.normalize("NFC", prompt)))
    if not tokens:
        return sentence
    pattern = re.escape(tokens[0])
    for before, token in pairwise(tokens):
        between_words = before[-1].isalnum() and token[0].isalnum()
        pattern += (r"\s+" if between_words else r"\s*") + re.escape(token)
    # Matched on the sentence spelled plainly, character by character, so that where the echo ends
    # there is where it ends in the sentence itself.
    sentence = unicodedata.normalize("NFC", sentence)
    plain = [plain_spelling(char) for char in sentence]
    echo = re.match(pattern, "".join(plain), re.IGNORECASE)
    if echo is None:
        return sentence
    ends = list(accumulate(len(spelled) for spelled in plain))
    last = bisect.bisect_left(ends, echo.end())  # the sentence's character the echo ends in
    if ends[last] != echo.end():
        return sentence  # inside a letter spelled with two ("a" of "æ"): inside a word, no echo
    rest = sentence[last + 1 :]
    if tokens[-1][-1].isalnum() and rest[:1].isalnum():
        return sentence  # the prompt ends inside the sentence's first words: no echo
    return rest.strip()


def open_vlm(
    model: str,
    *,
    cache_dir: Path | str | None,
    threads: int,
    use_gpu: bool,
    prompt: str = "a photo of",
    max_new_tokens: int = 30,
    store: ObjectStore | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    cache_unused_days: float = DEFAULT_UNUSED_DAYS,
    uri_from: str | None,
) -> VlmCaptioner:
    """Open the BLIP model ``model`` names: a local directory, or an s3:// or file:// URI (downloaded);
    ``uri_from`` is the setting it came from, which an S3 refusal says to check (None for a directory
    no setting chose, which a URI is refused)."""
    name = model.rstrip("/").rpartition("/")[2] or None
    if "://" in model:
        if uri_from is None:
            raise ValueError(f"the BLIP model {model} is a URI: uri_from must name the setting it came from")
        directory = fetch_model_dir(
            model,
            cache_dir,
            store=store,
            s3_endpoint_url=s3_endpoint_url,
            s3_region=s3_region,
            cache_unused_days=cache_unused_days,
            uri_from=uri_from,
        )
    else:
        directory = Path(model)
    return VlmCaptioner(
        directory, prompt=prompt, max_new_tokens=max_new_tokens, threads=threads, use_gpu=use_gpu, name=name
    )
