"""LoRA trainer: trains the diffusion backend's adapters from captioned SKUs and accepted images.

Consumes: ``sku.captioned`` (a specialised adapter per product series) and ``gate.accepted`` (the
general adapter, after ``SKUFORGE_LORA_GENERAL_AFTER_ACCEPTED`` new accepted images, or on the
``SKUFORGE_LORA_GENERAL_EVERY_S`` schedule).
Produces: ``adapter.published`` once an adapter's weights and metadata are in the registry the
generator reads; the generator lists the registry every ``SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S`` and
uses the new adapter without a restart. The event fits one Kafka record: a general adapter of more
SKUs than that holds names the first (``fitted_to_a_record``); its ``result.json`` names them all.

**Long jobs on a bus.** Training takes minutes to hours, far beyond a consumer's poll interval, so
the handlers do not train: they write the request to the store (``lora-trainer/series/<series>/
<sku_id>.json``, ``lora-trainer/accepted/<item_id>.json``) and return, and the runtime commits.
The store is the job queue: a worker thread (``LoraTrainer``) plans jobs from it, trains, registers
the adapter and publishes. The consumer keeps polling, so it never loses its partitions; nothing is
lost on a crash because the request is durable before its offset is committed. A SKU has one
request: re-captioned under another series (or none), its request leaves the old series' folder, found
through the SKU's index (``lora-trainer/skus/<sku_id>.json``; one an earlier release recorded, by listing
every series' requests once).

**What it trains on.** The photos the generator cuts products from (``cutout_sources``, with the
generator's ``SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND``; of a SKU with none on a plain background, each
in-store photo's largest blob, from those whose blob is one object when it has any, as the generator
cuts them, and from the others when those are all refused as the set is built), on the model the
adapters are labelled with (``adapter_base_model``: a model other than the generator's needs
``SKUFORGE_LORA_BASE_MODEL``).

**Restarts.** A job's id is its training set's content hash (``shared/lora_training/dataset.py``).
Training checkpoints to ``lora-trainer/jobs/<hash>/checkpoint.pt`` every
``SKUFORGE_LORA_CHECKPOINT_EVERY`` steps and on SIGTERM (heard too between the images of a set being
built or encoded: the next start builds or encodes it again); after SIGKILL the next start resumes from
it (from step 0 if it cannot be read; a set whose records cannot be read is built again). A job
whose adapter is published (``lora-trainer/published/<adapter_id>.json``) is never trained
again: a redelivered ``sku.captioned`` finds the same hash and does nothing. A recorded photo since
deleted or altered, or one the compositor refuses, is left out of the set (logged; the adapter's
``sku_ids`` then leave its SKU out). A job that cannot train as configured (an SDXL or
non-inpainting base model swapped in under a running trainer, an empty set, every photo left out)
is marked failed with its reason (``lora-trainer/jobs/<hash>/failed.json``) and not retried until
its inputs change or the file is deleted (a general one is not planned again, nor its request files
read, while the accepted images are the same, after a restart too: ``general.json`` records it); the
other jobs go on. A job whose training raises
anything else (a bug, NaN paint, a ``ValueError`` of torch's) is tried again at the next polls,
``JOB_MAX_ATTEMPTS`` times in all (counted in ``lora-trainer/jobs/<hash>/attempts.json``, so a
restart does not reset them; one that cannot be read starts the count again, with a warning naming
it), then marked failed with the last reason, its type and the training step or item it was raised at; a store
away (``TransientError``), a setting met mid-job (``ConfigError``), a file that cannot be read
(``OSError``: the model folder being copied again) or the GPU out of memory (a Triton on the same GPU
at its peak) is retried without counting, and ``SKUFORGE_LORA_DEVICE=cuda`` without CUDA is refused
at start-up, as is an install without the diffusion extra (``pip install 'skuforge[diffusion]'``:
torch, diffusers, peft, transformers). One trainer per GPU; trainers sharing a store take a
lease per series (and the general adapter) before its job (``services/lora_trainer/lease.py``): a second
one skips a job another runs, and takes the lease over once unchanged for ``LEASE_STALE_S`` (its trainer
died); one whose lease was taken over writes nothing more of the job (both logged, neither counted in
``skuforge_lora_jobs_total``). A trained job not yet
published whose ``result.json`` or weights cannot be read (cut short, mistyped, lost) is trained
again, resumed from its last checkpoint, with a warning naming the file. One registered whose
``adapter.published`` the broker did not take (away, or the topic refusing the record) is published
again, not trained again;
the log says so, naming the adapter, the topic and the broker's reason, and for a record the topic
refuses for good (over its ``max.message.bytes``) or the broker's ACLs refuse (the trainer's principal
may not write to the topic) that it fails alike until the limit is raised or the ACL changed. It is
tried again on a growing interval (the n-th failure in a row skips the next 2**(n-1) polls, up to
``PUBLICATION_BACKOFF_MAX_S``; a restart tries at once), not at every poll; the polls skipped read
nothing of its job (nor, for the general adapter, its schedule and request files), and the other series
train and publish meanwhile. A publish that raises anything but a ``TransientError`` of ``shared.bus`` is
the trainer's own fault, not the broker's: logged so, with its traceback, on the same interval. A poll
that cannot plan its
jobs (the store away while its requests are read) is logged as such: nothing was trained, and the next
poll plans again. A job stopped by the object store or the adapter
registry (away, or refusing a write) is logged naming which, with the uri it met (``StoreFailed``), not
as a training job that failed. One whose registration another registration of the adapter (the CLI's, a
second trainer's) took over while it paused holding the lock (``RegistrationTakenOver``) is logged as
that, no store's fault, and registered again at the next poll, not trained again. Each job's fault is
logged once, by the poll's jobs, with its adapter and reason (a training job that failed: its attempt and
traceback too), not again by the poll that caught it.

Bad input goes to the DLQ with its reason: a captioned SKU with no usable photo and mask
(``no_usable_photos``), a photo or mask missing from the store or not matching its sha256
(``object_missing``, ``checksum_mismatch``), bytes that are not an image.

A request file this version cannot read (not JSON, a field missing or mistyped) is logged and left
out of planning, so it never holds back the other series; fields it does not know (a newer trainer
wrote them) are ignored, as on the bus. An unreadable ``general.json`` (the general adapter's
schedule) leaves the general adapter out, logged as an error at each poll, until it is fixed or
deleted (the schedule then starts again); the series train on. So is an adapter whose records of its
publication cannot be read (its series' ``current/`` pointer, its ``published/`` marker, or on a
roll-back after its job folder expired its registry ``metadata.json`` or weights, lost or failing their
checksum): it is left out, an error at each poll names the file, the reason and what to do, and the
other series train on.

Metrics beside the runtime's: ``skuforge_lora_jobs_total`` (by outcome: published; interrupted, a
job stopped mid-way to be resumed; failed, a job marked failed for good; retried, a poll that ended
in a fault and is tried again at the next one, or for a publication refused for good or not taken (the
broker away) at the next try of its growing interval, the polls skipped between not counted),
``skuforge_lora_steps_total``, ``skuforge_lora_requests_total`` (by kind) and
``skuforge_lora_requests_unreadable`` (by kind: request files the last plan left out, an accepted one
until it is deleted or mended, looked at again at each poll; general: 1 while
``general.json`` is unreadable; published: adapters the last poll left out, a record of their
publication or their registry weights unreadable).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, overload

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from schemas.common import NOT_ONE_LINE, READ_FROM_STORE, READ_FROM_TOPIC, escaped_within
from schemas.envelope import Envelope, derive_id
from schemas.events import MAX_TRAINING_PROMPT_CHARS, AdapterPublished, GateAccepted, SkuCaptioned
from schemas.flow import LORA_TRAINER
from schemas.topics import ADAPTER_PUBLISHED, GATE_ACCEPTED, SKU_CAPTIONED
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.lease import JobLease, JobLeases, LeaseLost
from shared.bus import READ_EXTRA, Publisher, PublishForbidden, RecordRefused, make_envelope
from shared.captioning.prompts import class_noun, class_prompt
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, ObjectMissing, TransientError
from shared.generation.adapters import (
    METADATA_FILE,
    AdapterKind,
    AdapterMetadata,
    AdapterRegistry,
    RegistrationTakenOver,
    RegistryStoreFailed,
    lora_rank,
    resolve_adapter,
)
from shared.generation.backend import cut_from_cluttered_photos, cutout_sources
from shared.generation.diffusion import DiffusionSettings, model_digest, paint_finite, release_memory
from shared.generation.settings import GenerationSettings
from shared.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, UInt8Array, decode_image, pixel_array
from shared.lora_training.dataset import (
    InstanceSource,
    TrainingRecipe,
    build_training_set,
    load_training_set,
    slug,
    square_image,
    training_set_sha256,
)
from shared.lora_training.train import (
    TrainingError,
    TrainingInterrupted,
    check_trainable,
    train_lora,
    trained_class_items,
)
from shared.runtime import MAX_OUTPUT_RECORD_BYTES, Context, Emit, Stage, run_stage, stage_command
from shared.store import ObjectStore, open_settings_store, sha256_hex

PREFIX = "lora-trainer"
# The general adapter's schedule (accepted_count, covered, trained_at) and the general job under way
# (in_flight).
GENERAL_STATE_KEY = f"{PREFIX}/general.json"
# Each SKU's series request, by SKU (``skus/<sku_id>.json``: {"request": <key> or null}), so that a
# re-captioned SKU's earlier request is found without listing every series' requests.
SKU_INDEX = f"{PREFIX}/skus"
# Attempts of a job whose training raises something unexpected (not a refusal, not a store away)
# before it is marked failed: a bug or an out-of-memory on the same inputs fails the same way.
JOB_MAX_ATTEMPTS = 3
# Denoising steps a painted class image takes.
PAINT_STEPS = 25
log = logging.getLogger("skuforge.lora-trainer")
_E = TypeVar("_E", bound=BaseException)


JOB_OUTCOMES = ("published", "interrupted", "failed", "retried")


class LoraTrainerMetrics:
    """The trainer's own metrics, in the stage's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter(
            "skuforge_lora_jobs_total",
            "Training jobs by outcome (published, interrupted, failed for good; retried: a poll that "
            "ended in a fault, tried again at the next, or for a publication the topic or an ACL refuses "
            "for good at the next try of its growing interval: the polls between are not counted).",
            ["outcome"],
            registry=registry,
        )
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(outcome)
        self.steps = Counter("skuforge_lora_steps_total", "Optimiser steps run.", registry=registry)
        self.requests = Counter(
            "skuforge_lora_requests_total", "Requests recorded, by kind.", ["kind"], registry=registry
        )
        self.unreadable = Gauge(
            "skuforge_lora_requests_unreadable",
            "Request files the last plan left out because this version cannot read them, by kind "
            "(general: 1 while general.json, the general adapter's schedule, is unreadable; published: "
            "adapters the last poll left out because a record of their publication, or their weights in "
            "the registry, cannot be read).",
            ["kind"],
            registry=registry,
        )
        for kind in ("captioned", "accepted", "general", "published"):
            self.unreadable.labels(kind)


# --- the handlers: record the request durably, return -------------------------------------------


def record_captioned(
    event: Envelope[SkuCaptioned], ctx: Context, *, metrics: LoraTrainerMetrics
) -> list[Emit]:
    """Record a captioned SKU for its series' specialised adapter (checked: photos and masks readable)."""
    captioned = event.payload
    sku_id = captioned.sku.sku_id
    usable = [p for p in captioned.photos if p.usable and p.mask is not None]
    key = None
    if captioned.sku.series.strip():
        key = f"{PREFIX}/series/{slug(captioned.sku.series)}/{sku_id}.json"
    try:
        if not usable:
            raise BadInput("no_usable_photos", f"{sku_id}: no photo is usable with a product mask")
        for photo in usable:
            ctx.read_image(photo.image)
            assert photo.mask is not None
            ctx.read_mask(photo.mask)
    except BadInput:
        # Re-captioned with no photo to train on: its earlier request must not keep its series training
        # on photos the captioner now refuses (or that are gone). A replay once fixed records it again.
        # This event's own request too: an attempt of a trainer that wrote it before indexing it (the
        # release before this order), cut short in between, is redelivered with the index naming the
        # request before it.
        stale_requests, indexed = _series_requests_of(ctx.store, sku_id)
        if key is not None and key not in stale_requests and indexed and ctx.store.exists(key):
            stale_requests.append(key)
        for stale in stale_requests:
            ctx.store.delete(stale)
            ctx.log.info(
                "SKU left its series: nothing to train on", extra={"sku_id": sku_id, "request": stale}
            )
        if stale_requests or not indexed:
            _index_series_request(ctx.store, sku_id, None)
        raise
    # A SKU belongs to one series: a re-captioned SKU whose series changed (or was cleared) must leave
    # the old series, or that series keeps training on it and its adapter is served for it. The old
    # request deleted first, the index naming the new one second, the new one written last: cut short
    # anywhere (a crash, redelivered; a failure dead-lettered, not redelivered), the index still names
    # every request the SKU has, for its next event to delete. Written first and indexed last, a move
    # dead-lettered half-way left the new request unindexed, in its series for good.
    stale_requests, indexed = _series_requests_of(ctx.store, sku_id)
    for stale in stale_requests:
        if stale != key:
            ctx.store.delete(stale)
            ctx.log.info("SKU left its former series", extra={"sku_id": sku_id, "request": stale})
    if not indexed or stale_requests != ([] if key is None else [key]):
        _index_series_request(ctx.store, sku_id, key)
    if key is not None:
        ctx.store.put_json(key, captioned)
    if key is None:
        ctx.log.info("no series: nothing to specialise", extra={"sku_id": sku_id})
        return []
    ctx.after_commit(metrics.requests.labels("captioned").inc)  # once, not per attempt
    return []


def _series_requests_of(store: ObjectStore, sku_id: str) -> tuple[list[str], bool]:
    """The keys of the series requests recorded for ``sku_id`` (``series/<folder>/<sku_id>.json``), and
    whether its index (``SKU_INDEX``) named them. The event does not say which series the SKU was in
    before, so they were found by listing every series request in the store, at every ``sku.captioned``:
    a catalogue of n SKUs captioned listed n times n keys. A SKU an earlier release recorded (no index),
    or whose index cannot be read, is found by that listing still (False: the caller indexes it)."""
    index_key = f"{SKU_INDEX}/{sku_id}.json"
    try:
        index = json.loads(store.get_bytes(index_key))
        if not isinstance(index, dict):
            raise ValueError(f"not a JSON object but a {type(index).__name__}")
        request = index["request"]
        if request is None:
            return [], True
        # Only a key the handler writes (one folder under series/): an index edited by hand to name another
        # object must not have it deleted.
        if isinstance(request, str) and re.fullmatch(
            rf"{re.escape(PREFIX)}/series/(?!\.\.?/)[^/]+/{re.escape(sku_id)}\.json", request
        ):
            return [request], True
        raise ValueError(f"request is {request!r:.80}, not a series request of {sku_id}")
    except ObjectMissing:
        pass  # recorded by an earlier release, or never
    except (ValueError, KeyError) as exc:
        log.warning(
            "SKU index cannot be read: the series requests are listed instead, and it is written again",
            extra={"key": index_key, "reason": _one_line(exc)},
        )
    prefix = f"{PREFIX}/series/"
    name = f"{sku_id}.json"
    keys = []
    for key in store.list_addressable(prefix):
        folder, _, rest = key[len(prefix) :].partition("/")
        if folder and rest == name:
            keys.append(key)
    return keys, False


def _index_series_request(store: ObjectStore, sku_id: str, request: str | None) -> None:
    """Record in ``sku_id``'s index (``SKU_INDEX``) its series request (None: it has none)."""
    store.put_json(f"{SKU_INDEX}/{sku_id}.json", {"request": request})


def record_accepted(
    event: Envelope[GateAccepted], ctx: Context, *, metrics: LoraTrainerMetrics
) -> list[Emit]:
    """Record an accepted generated image for the general adapter.

    Its image and mask are read first (checked against their sha256, decoded within the limits): an
    accepted event whose image is gone or changed was recorded anyway, counted towards
    ``SKUFORGE_LORA_GENERAL_AFTER_ACCEPTED``, and only dropped at training time with a log line. Now it
    is dead-lettered with the reason, and an earlier record of it (a replay) is deleted."""
    generated = event.payload.matted.generated
    key = f"{PREFIX}/accepted/{generated.item_id}.json"
    try:
        ctx.read_image(generated.image)
        ctx.read_mask(generated.expected_mask)
    except BadInput:
        if ctx.store.exists(key):
            ctx.store.delete(key)
            ctx.log.info("accepted image left the general set: unreadable", extra={"item": generated.item_id})
        raise
    record = {
        "sku_id": generated.sku.sku_id,
        "item_id": generated.item_id,
        "image": generated.image.model_dump(mode="json"),
        "mask": generated.expected_mask.model_dump(mode="json"),
        "prompt": generated.prompt,
        "class_noun": generated.sku.category,
    }
    ctx.store.put_json(key, record)
    ctx.after_commit(metrics.requests.labels("accepted").inc)  # once, not per attempt
    return []


# --- the worker: plan, train, register, publish ---------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One adapter to train: its kind, series, inputs and identity."""

    kind: AdapterKind
    series: str | None
    sources: list[InstanceSource]
    sha256: str
    accepted_count: int = 0  # general jobs: how many accepted images it covers
    accepted_keys: tuple[str, ...] = ()  # general jobs: the request files its sources were read from
    # General jobs: the request files it covers (every one recorded when it was planned; None for a job
    # under way that an earlier release recorded without them), so the next counts new ones by name.
    covered_keys: tuple[str, ...] | None = None

    @property
    def adapter_id(self) -> str:
        return f"{slug(self.series) if self.series else 'general'}-{self.sha256[:12]}"

    def coverage(self) -> dict[str, Any]:
        """What ``general.json`` records of the accepted images this general job covers: how many, and
        the request files by name when the job has them (in its schedule and in its ``in_flight``)."""
        coverage: dict[str, Any] = {"accepted_count": self.accepted_count}
        if self.covered_keys is not None:
            coverage["covered"] = list(self.covered_keys)
        return coverage


def _accepted_source(data: bytes) -> InstanceSource:
    """The training source an ``accepted/`` request file records (``ValueError``, ``KeyError`` or
    ``TypeError`` when this version cannot read it)."""
    record = json.loads(data)
    # The record holds the SKU's category: worded as sku_prompts words it for the captioner, so the
    # general adapter's class prompt ("a photo of an aubergine", not "a photo of a Aubergine") and
    # class-image folder (creme-fraiche/, not cr-me-fra-che/) are the series adapters' own.
    noun = class_noun(_text(record, "class_noun"))
    prior = class_prompt(noun)
    return InstanceSource(
        sku_id=_text(record, "sku_id"),
        photo_id=_text(record, "item_id"),
        image_uri=_text(record["image"], "uri"),
        image_sha256=_text(record["image"], "sha256"),
        mask_uri=_text(record["mask"], "uri"),
        mask_sha256=_text(record["mask"], "sha256"),
        instance_prompt=_text(record, "prompt") or prior,
        class_noun=noun,
        class_prompt=prior,
        composite=False,
    )


def _text(record: dict[str, Any], field: str) -> str:
    """``record[field]``, a string (``TypeError`` if not): a number or a list got into the plan and
    failed it at every poll (sorting the job's hash), or failed the job at training or publishing."""
    value = record[field]
    if not isinstance(value, str):
        raise TypeError(f"{field} is a {type(value).__name__}, not a string")
    return value


def _requests_digest(covered_keys: Sequence[str], picked: Sequence[str]) -> str:
    """A short stand-in for a general job's request files (every one recorded, and those it picked), as
    ``general.json`` records a failed one: listed, they doubled the file's size."""
    return sha256_hex(json.dumps([list(covered_keys), list(picked)]).encode())


def _checked_general_state(data: bytes) -> dict[str, Any]:
    """``general.json``'s object, each field it holds of the type the plan reads (``ValueError`` if not:
    truncated, not JSON, or ``accepted_count`` "3" failed the plan at every poll)."""
    state = json.loads(data)
    if not isinstance(state, dict):
        raise ValueError(f"not a JSON object but a {type(state).__name__}")
    in_flight = state.get("in_flight")
    if in_flight is not None and not (
        isinstance(in_flight, dict)
        and isinstance(in_flight.get("keys"), list)
        and all(isinstance(key, str) for key in in_flight["keys"])
    ):
        raise ValueError("in_flight is not an object with a list of request keys")
    for where, name in ((state, "covered"), (in_flight or {}, "in_flight.covered")):
        covered = where.get("covered")
        if "covered" in where and not (
            isinstance(covered, list) and all(isinstance(key, str) for key in covered)
        ):
            raise ValueError(f"{name} is not a list of request keys")
    for where, name, field, types in (
        (state, "accepted_count", "accepted_count", (int,)),
        (state, "trained_at", "trained_at", (int, float)),
        (in_flight or {}, "in_flight.accepted_count", "accepted_count", (int,)),
    ):
        value = where.get(field)
        if field in where and (isinstance(value, bool) or not isinstance(value, types) or value < 0):
            raise ValueError(f"{name} is {value!r}, not a number of at least 0")
    return state


def _checked_result(data: bytes) -> dict[str, Any]:
    """A trained job's ``result.json``, each field ``_publish`` reads of its type (``ValueError`` if
    not: cut short or mistyped, it raised at publishing, at every poll, for ever)."""
    result = json.loads(data)
    if not isinstance(result, dict):
        raise ValueError(f"not a JSON object but a {type(result).__name__}")
    for field in ("steps", "instance_images", "class_images", "resumed_from_step"):
        value = result.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{field} is {value!r}, not a number of at least 0")
    loss = result.get("final_loss")
    # json.loads takes NaN and Infinity, which the event refuses (JSON has no such number).
    if loss is not None and (
        isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss)
    ):
        raise ValueError(f"final_loss is {loss!r}, not a finite number")
    for field, value in (
        ("training_prompts", result.get("training_prompts")),
        ("sku_ids", result.get("sku_ids", [])),
    ):
        if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ValueError(f"{field} is {value!r:.80}, not a list of strings")
    return result


class UnreadableRecord(Exception):
    """A record the trainer keeps of a published adapter (its series' ``current/`` pointer, its
    ``published/`` marker, its registry metadata) that this version cannot read: ``key`` names it,
    ``reason`` says why, ``fix`` what to do and ``cause`` what is wrong, for the operator (a pointer
    cut short is not weights gone from the registry). Its job is left out until an operator acts. Also a
    trained job's own output (``_folder_output``), which is trained again instead."""

    def __init__(
        self,
        key: str,
        exc: BaseException,
        fix: str,
        cause: str = "a record of its publication cannot be read",
    ) -> None:
        self.key, self.reason, self.fix, self.cause = key, _one_line(exc), fix, cause
        super().__init__(f"{key}: {self.reason}")


# The most a publication the topic refuses, or the broker does not take, waits between tries (s, in polls
# of SKUFORGE_LORA_POLL_S): the n-th failure in a row waits 2**(n-1) polls, so a raised limit or a broker
# back is met within about this long. Under 15 minutes: each try counts `retried`, which
# SkuforgeLoraJobsRetrying reads over 15 minutes.
PUBLICATION_BACKOFF_MAX_S = 300.0


class PublicationFailed(Exception):
    """A trained job's adapter is registered but its ``adapter.published`` was not sent (the broker
    away, the topic refusing the record): ``reason`` says why, ``outlook`` what the next polls do. It
    skips the next ``skipped_polls`` polls (``PublicationBackoff``) before it is published again, from the
    job's result and the registry's copy, without training again; one the topic refuses for good
    (``RecordRefused``) or an ACL refuses (``PublishForbidden``) is sent only once its limit is raised (or
    the ACL changed). ``tried``
    is False for a poll that waited out the backoff without sending (nothing new to log or count)."""

    def __init__(
        self, adapter_id: str, exc: BaseException, *, skipped_polls: int = 0, tried: bool = True
    ) -> None:
        self.adapter_id, self.topic, self.reason = adapter_id, ADAPTER_PUBLISHED.name, _one_line(exc)
        self.tried = tried
        # Told "the next poll publishes it" at every poll for ever, the operator waited for an outage
        # to pass where only raising the limit ends it.
        backing_off = (
            f"tried again after {skipped_polls} poll(s) skipped, twice as many after each failure in a "
            f"row, up to about {PUBLICATION_BACKOFF_MAX_S:.0f} s (retried, not trained again)"
        )
        if isinstance(exc, RecordRefused):
            self.outlook = (
                f"refused for good by the topic: {backing_off}; it is sent once the topic's "
                "max.message.bytes is raised"
            )
        elif isinstance(exc, PublishForbidden):
            self.outlook = (
                f"refused by the broker's ACLs: {backing_off}; it is sent once an ACL lets the trainer's "
                "principal write to the topic"
            )
        elif isinstance(exc, TransientError):
            # Tried at every poll, each try planned every job and read every request file again, for as
            # long as the broker was away.
            self.outlook = f"the broker did not take it: {backing_off}; it is sent once the broker takes it"
        else:
            # Not a TransientError of shared.bus: the event was not made or not handed to the producer (a
            # bug, a producer that could not be opened). Read as "the broker did not take it", it sent the
            # operator to a broker that was never asked.
            self.outlook = (
                f"a fault of the trainer's own, not the broker's (its traceback is logged): {backing_off}; "
                "if it keeps failing, report it with that traceback"
            )
        super().__init__(f"{self.topic} for adapter {adapter_id} not sent: {self.reason}")


@dataclass
class PublicationBackoff:
    """A publication the topic (or an ACL) refused for good, or the broker did not take (away), ``failures``
    times in a row (``fault`` the last), not sent again for ``polls_left`` more polls. Sent at every poll,
    a refused one opened a new producer each time (the refusal stops kafka-python's idempotent producer
    for good), for as long as the limit (or the ACL) stayed; and every such poll read the job's result
    and weights again. Its job alone waits: the polls between read nothing of it (nor, for the general
    adapter, ``general.json`` or its request files), and the other series train and publish."""

    fault: Exception
    failures: int
    polls_left: int
    general: bool  # the general adapter's: the polls between do not plan the general job


class CurrentPointer(NamedTuple):
    """A series' (or the general adapter's) ``current/`` pointer: ``adapter_id`` the adapter last
    published; ``under_way`` the publication of it a roll-back sent, its marker maybe not yet counting
    it (None: none); ``unpublished`` an adapter registered since (the generator serves it) whose
    ``adapter.published`` was not sent yet (None: none)."""

    adapter_id: str
    under_way: int | None
    unpublished: str | None

    def record(self) -> dict[str, Any]:
        """The pointer as stored (``under_way`` as ``publication``, what ``_current`` reads), without the
        fields that are None. Stored as ``under_way``, a roll-back's publication was lost when the
        pointer was rewritten naming an adapter unpublished, and the next roll-back took its event id."""
        stored = {
            "adapter_id": self.adapter_id,
            "publication": self.under_way,
            "unpublished": self.unpublished,
        }
        return {name: value for name, value in stored.items() if value is not None}


class PlanningFailed(Exception):
    """The jobs could not be planned: reading the store's requests or the general schedule failed (the
    store away), ``reason`` says why. Nothing was trained; the next poll plans again."""

    def __init__(self, exc: BaseException) -> None:
        self.reason = _one_line(exc)
        super().__init__(f"planning the jobs (reading the store) failed: {self.reason}")


class StoreFailed(TransientError):
    """A job stopped on the object store or the adapter registry (away, or refusing a read or a write):
    ``where`` names which and its setting, ``reason`` the store's own words (the uri it met). Not the
    training's fault: the job is tried again at the next poll, uncounted, resumed from its checkpoint.
    A ``TransientError`` still, as the store's own was, to a caller of ``run_pending``."""

    def __init__(self, where: str, exc: TransientError) -> None:
        self.where, self.reason = where, _one_line(exc)
        super().__init__(f"{where}: {self.reason}")
        self.__cause__ = exc


def _one_line(exc: BaseException) -> str:
    """A one-line reason for a log line (a ValidationError's str runs over many lines), with the notes that
    say where it was raised ("at training step 3 of 800")."""
    notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
    return " ".join(f"{type(exc).__name__}: {exc}".split())[: 300 - len(notes)] + notes


_OUT_OF_MEMORY_NOTE = (
    "out of GPU memory: tried again uncounted; if it keeps failing, give the trainer a GPU of its own or "
    "lower SKUFORGE_LORA_RESOLUTION"
)


def _drop_attempt_notes(exc: BaseException) -> None:
    """Take off ``exc`` the notes an earlier attempt put there ("attempt 1 of 3", out of GPU memory): the
    same exception object raised at several attempts (one a library keeps and raises again) carried
    every earlier attempt's note, and the failed job's reason all of them."""
    notes = getattr(exc, "__notes__", None)
    if notes:
        notes[:] = [
            note
            for note in notes
            if note != _OUT_OF_MEMORY_NOTE and not re.fullmatch(rf"attempt \d+ of {JOB_MAX_ATTEMPTS}", note)
        ]


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error (torch is loaded by then if it can be)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _without_frames(exc: _E) -> _E:
    """``exc`` (and the exceptions chained to it) without tracebacks: kept for later, a traceback
    would keep every frame it passed through alive, with the models and optimiser of a training job."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return exc


class LoraTrainer:
    """Trains what the store's requests call for; ``run_pending`` once, or ``start`` a thread."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        registry: AdapterRegistry,
        registry_from: str,
        settings: LoraTrainerSettings,
        model_dir: Path,
        base_model: str,
        min_plain_background: float,
        publish: Callable[[AdapterPublished], None],
        metrics: LoraTrainerMetrics,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
        paint_dtype: str = "auto",
    ) -> None:
        """``base_model`` labels the adapters (what the generator's SKUFORGE_DIFFUSION_BASE_MODEL
        matches); ``min_plain_background`` is the generator's SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND;
        the image limits are the shared settings' (SKUFORGE_MAX_IMAGE_PIXELS / _BYTES), which ingest
        and the captioner held the photos to. ``paint_dtype`` is the class painter's
        (SKUFORGE_DIFFUSION_DTYPE, ``painter_dtype``): 'auto' = float16 on CUDA, float32 on CPU.
        ``registry_from`` is the setting the registry's URI came from (``adapters_uri_from``), which
        its faults name: SKUFORGE_DIFFUSION_ADAPTERS_URI was named while unset."""
        self.store = store
        self.registry, self.registry_from = registry, registry_from
        self.settings = settings
        self.recipe: TrainingRecipe = settings.recipe()
        self.model_dir = model_dir
        self.base_model = base_model
        # Part of every job's hash: a checkpoint of one UNet is never resumed into another.
        self.model_digest = model_digest(model_dir)
        self.min_plain_background = min_plain_background
        self.publish = publish
        self.metrics = metrics
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None  # the last poll's fault, without its traceback
        # The fault run_pending last raised after logging it with its job: poll does not log it again.
        self._logged_failure: BaseException | None = None
        # Publications the topic refused for good or the broker did not take, by adapter and publication:
        # in the process only, so a restart (after raising the limit, say) tries each at once.
        self._backoffs: dict[tuple[str, int], PublicationBackoff] = {}
        # The accepted/ request files the last general plan left out (unreadable), looked at again at
        # each poll: skuforge_lora_requests_unreadable{kind="accepted"} counts those still unreadable.
        self._accepted_left_out: set[str] = set()
        self.max_image_pixels, self.max_image_bytes = max_image_pixels, max_image_bytes
        self._class_folder = _read_class_folder(
            settings.lora_class_images_dir,
            self.recipe.resolution,
            most=self.recipe.class_images,
            max_pixels=max_image_pixels,
            max_bytes=max_image_bytes,
        )
        self._painter: Any = None  # the base model's pipeline while a job paints its class images
        # What a general job's hash holds besides its sources: a failure general.json records under
        # other inputs (another recipe, model or class folder before a restart) is not this job's.
        self._general_inputs = self._hash_without_sources("general")
        self.paint_dtype = paint_dtype
        # One lease per series (and the general adapter): a second trainer on the store skips a job this
        # one runs (``services/lora_trainer/lease.py``). The running job's, checked before its writes.
        self.leases = JobLeases(store)
        self._lease: JobLease | None = None

    # -- thread --

    def start(self) -> LoraTrainer:
        self._thread = threading.Thread(target=self._loop, name="lora-trainer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        """Ask the worker to stop and wait for it: a running job stops at the next denoising step of a
        class image it paints, or its next photo or item it encodes (built or encoded again next start),
        or checkpoints at its next training step."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except TrainingInterrupted:
                return
            self._wake.wait(self.settings.lora_poll_s)
            self._wake.clear()

    def poll(self) -> None:
        """One round of ``run_pending``; a fault is logged, kept in ``last_error`` and counted as
        ``retried`` (the next poll tries again; a job marked failed for good is counted ``failed``
        once, where it is marked; a poll that skips a refused publication's try counts nothing)."""
        try:
            self.run_pending()
            self.last_error = None
        except TrainingInterrupted:
            raise
        except PublicationFailed as exc:  # the adapter is registered; only its event is sent again
            # Logged by run_pending, once per try (and not at all by a poll that waited out a backoff):
            # logged here too, each try read as two failures.
            if exc.tried:
                self.metrics.jobs.labels("retried").inc()
            self.last_error = _without_frames(exc)
        except StoreFailed as exc:  # a job began: the store or registry is to blame, not its training
            # Logged by run_pending with its adapter, as a job's every fault (RegistrationTakenOver and
            # any other below): logged here too, each job's fault read as two, the second without it.
            self.metrics.jobs.labels("retried").inc()
            self.last_error = _without_frames(exc.__cause__ or exc)
        except PlanningFailed as exc:  # no job began: the store is to blame, not the GPU, model or photos
            self.metrics.jobs.labels("retried").inc()
            log.error(
                "planning the jobs failed reading the store; nothing was trained, the next poll tries again",
                extra={"reason": exc.reason},
            )
            self.last_error = _without_frames(exc.__cause__ or exc)
        except Exception as exc:  # a store or broker fault: log, wait, try again (the job resumes)
            self.metrics.jobs.labels("retried").inc()
            if exc is not self._logged_failure:  # not a job's (run_pending logged those): a fault of its own
                log.exception("the poll failed; it is tried again after the poll interval")
            self.last_error = _without_frames(exc)

    # -- planning --

    def plan(self, *, general: bool = True) -> list[Job]:
        """The jobs the store's requests call for: one per series, and the general one when due (not
        looked for with ``general`` False)."""
        jobs = []
        # Grouped by the series as the generator's resolve_adapter compares it, not by folder: the
        # folder is a slug that distinct series share ("Cola 330ml"/"cola-330ml", non-Latin names).
        by_series: dict[str, list[SkuCaptioned]] = {}
        unreadable = 0
        for key in sorted(self.store.list_addressable(f"{PREFIX}/series/")):
            # Tolerant like the bus reader: a file a newer trainer wrote (then rolled back) still plans,
            # and one with text the contract refuses since reads escaped (a caption's newline), or as
            # stored (READ_FROM_STORE: a photo's uri, which escaped would name another object). Read as
            # the topic's, a request stored before review 48 was skipped, its SKU dropped from the series.
            try:
                captioned = SkuCaptioned.model_validate_json(
                    self.store.get_bytes(key), extra=READ_EXTRA, context=READ_FROM_STORE
                )
            except (ValidationError, BadInput) as exc:
                # One file must not stop training for every series; store outages still propagate.
                unreadable += 1
                log.warning("request file skipped", extra={"key": key, "reason": _one_line(exc)})
                continue
            by_series.setdefault(captioned.sku.series.strip().casefold(), []).append(captioned)
        self.metrics.unreadable.labels("captioned").set(unreadable)
        for members in by_series.values():
            sources = [source for c in members for source in _instance_sources(c, self.min_plain_background)]
            series = members[0].sku.series
            jobs.append(Job("specialized", series, sources, self._hash("specialized", series, sources)))
        general_job = self._general_job() if general else None
        if general_job is not None:
            jobs.append(general_job)
        if not general:
            # While the general adapter's publication backs off its plan is skipped, and the accepted/ files
            # it left out were not looked at again for up to PUBLICATION_BACKOFF_MAX_S: only those are read.
            self._recount_left_out(None)
        return jobs

    def _general_job(self) -> Job | None:
        keys = sorted(self.store.list_addressable(f"{PREFIX}/accepted/"))
        self._recount_left_out(keys)
        every = self.settings.lora_general_every_s
        try:
            state = self._general_state()
        except ValueError as exc:
            # Raised out of plan(), it stopped every series at every poll. Not rebuilt: a new schedule
            # would forget the job under way (trained again from step 0) and an edit an operator is making.
            self.metrics.unreadable.labels("general").set(1)
            log.error(
                "the general adapter is left out: its schedule cannot be read; fix the file, or delete it "
                "to start the schedule again from every accepted image",
                extra={"key": GENERAL_STATE_KEY, "reason": _one_line(exc)},
            )
            return None
        self.metrics.unreadable.labels("general").set(0)
        if state is None:
            state = {}
            if keys and every > 0:
                # The schedule's clock starts at the first accepted image seen: with none, it was due
                # at once, and one image trained the adapter every SKU without a series one gets.
                state = {"accepted_count": 0, "trained_at": time.time()}
                self.store.put_json(GENERAL_STATE_KEY, state)
        in_flight = state.get("in_flight")
        if isinstance(in_flight, dict) and isinstance(in_flight.get("keys"), list):
            # A general job started and neither published nor failed (a SIGTERM, a crash, a redeploy):
            # it is finished first, on the images it started with. Planned from every accepted image,
            # one more arriving meanwhile made it another job, and training began again from step 0.
            picked = [str(key) for key in in_flight["keys"] if self.store.exists(str(key))]
            accepted_count = int(in_flight.get("accepted_count", len(picked)))
            covered = in_flight.get("covered")
            covered_keys = None if covered is None else tuple(covered)
        else:
            covered = state.get("covered")
            if covered is None:  # a schedule an earlier release wrote: only a number
                new = len(keys) - int(state.get("accepted_count", 0))
            else:
                # By name, not by number: a covered image whose record was deleted since (a replay found
                # it unreadable) took one off every later count, and the next job waited for more.
                new = len(set(keys).difference(covered))
            scheduled = every > 0 and new > 0 and time.time() - float(state.get("trained_at", 0.0)) >= every
            if new < self.settings.lora_general_after_accepted and not scheduled:
                return None
            picked, accepted_count = _spread(keys, self.settings.lora_general_max_images), len(keys)
            covered_keys = tuple(keys)
            if self._general_failed_again(state, covered_keys, tuple(picked)):
                return None
        sources = []
        left_out = set()
        for key in picked:
            try:
                sources.append(_accepted_source(self.store.get_bytes(key)))
            except (ValueError, KeyError, TypeError, BadInput) as exc:
                left_out.add(key)
                log.warning("request file skipped", extra={"key": key, "reason": _one_line(exc)})
        self._accepted_left_out = left_out
        self.metrics.unreadable.labels("accepted").set(len(left_out))
        return Job(
            "general",
            None,
            sources,
            self._hash("general", None, sources),
            accepted_count=accepted_count,
            accepted_keys=tuple(picked),
            covered_keys=covered_keys,
        )

    def _recount_left_out(self, keys: list[str] | None) -> None:
        """Count again the ``accepted/`` request files the last general plan left out, of ``keys`` (those
        there now; None: asked of the store one by one), reading only those. Set only when the general job
        was planned, the gauge stayed up after an operator deleted or fixed the file the log named, until
        the next job was due (hours)."""
        remembered = self._accepted_left_out
        if keys is None:
            there = {key for key in remembered if self.store.exists(key)}
        else:
            there = remembered.intersection(keys)
        still = set()
        for key in there:
            try:
                _accepted_source(self.store.get_bytes(key))
            except (ValueError, KeyError, TypeError, BadInput):
                still.add(key)
        self._accepted_left_out = still
        self.metrics.unreadable.labels("accepted").set(len(still))

    def _general_failed_again(
        self, state: dict[str, Any], covered_keys: tuple[str, ...], picked: tuple[str, ...]
    ) -> bool:
        """Whether these request files (every one recorded, and the spread picked of them) plan the general
        job ``general.json`` records as failed for good (``failed``), under this trainer's other inputs,
        its ``failed.json`` still there. Planned again, every poll read each picked request file (up to
        SKUFORGE_LORA_GENERAL_MAX_IMAGES) only to find it failed, until new images came; remembered in
        the process only, every restart did so once more. Told by name, as new images are: a new one, or
        one deleted, plans a new job, and deleting ``failed.json`` (an operator's retry) plans this one
        again. A record this version cannot read is no record: the job is planned, and found failed."""
        failed = state.get("failed")
        if not (
            isinstance(failed, dict)
            and failed.get("inputs") == self._general_inputs
            and failed.get("requests") == _requests_digest(covered_keys, picked)
            and isinstance(failed.get("job"), str)
            and re.fullmatch(r"[0-9a-f]{64}", failed["job"])
        ):
            return False
        return self.store.exists(f"{PREFIX}/jobs/{failed['job']}/failed.json")

    def _general_failed_for_good(self, job: Job) -> None:
        """Record in ``general.json`` that ``job`` (the general job) failed for good: no longer under way
        (new images plan a new job), and not planned again while the same request files would plan it
        (``_general_failed_again``), by this process or the next."""
        state = self._general_state() or {}
        wanted = dict(state)
        wanted.pop("in_flight", None)
        wanted.pop("failed", None)
        if job.covered_keys is not None:  # a job an earlier release started is not told by name
            wanted["failed"] = {
                "job": job.sha256,
                "inputs": self._general_inputs,
                "requests": _requests_digest(job.covered_keys, job.accepted_keys),
            }
        if wanted != state:
            self.store.put_json(GENERAL_STATE_KEY, wanted)

    def _general_state(self) -> dict[str, Any] | None:
        """``general.json`` as stored; None before the first accepted image started its clock.
        ``ValueError`` (naming the field) when this version cannot read it."""
        if not self.store.exists(GENERAL_STATE_KEY):
            return None
        return _checked_general_state(self.store.get_bytes(GENERAL_STATE_KEY))

    def _general_in_flight(self, job: Job | None) -> None:
        """Record ``job`` as the general job under way (None: none is), in ``general.json``."""
        state = self._general_state() or {}
        wanted: dict[str, Any] | None = None
        if job is not None:
            wanted = {"keys": list(job.accepted_keys), **job.coverage()}
        if state.get("in_flight") != wanted:
            if wanted is None:
                state.pop("in_flight", None)
            else:
                state["in_flight"] = wanted
            self.store.put_json(GENERAL_STATE_KEY, state)

    def _general_in_flight_now(self) -> bool:
        """Whether ``general.json`` records a general job under way."""
        return (self._general_state() or {}).get("in_flight") is not None

    def _general_published(self, job: Job) -> None:
        """Record ``job`` (the general job) as published in ``general.json``: its accepted images
        counted, the schedule's clock started again, no job under way."""
        self.store.put_json(GENERAL_STATE_KEY, {**job.coverage(), "trained_at": time.time()})

    def _general_up_to_date(self, job: Job) -> None:
        """Record in ``general.json`` that the general adapter already published covers ``job``'s images
        (planned from every accepted image, it is the adapter current): new images that left the spread
        unchanged (``SKUFORGE_LORA_GENERAL_MAX_IMAGES``) were never counted as covered, and every poll
        planned the job again, reading each of its request files. The clock stays the last training's."""
        if job.kind != "general" or job.covered_keys is None:
            return
        state = self._general_state() or {}
        coverage = job.coverage()
        if state.get("covered") != coverage["covered"]:
            self.store.put_json(GENERAL_STATE_KEY, {**state, **coverage})

    def _hash_without_sources(self, kind: str) -> str:
        """A fingerprint of what a ``kind`` job's hash holds besides its sources and series: the base
        model, the model folder, the recipe and every class-folder image a job may draw."""
        count = self.recipe.class_images if self.recipe.prior_loss_weight > 0 else 0
        folder = [
            (name, digest)
            for name, digests in sorted(self._class_folder.digests.items())
            for digest in digests[:count]
        ]
        return training_set_sha256(
            kind=kind,
            series=None,
            base_model=self.base_model,
            model_digest=self.model_digest,
            sources=[],
            recipe=self.recipe,
            class_folder=folder,
        )

    def _hash(self, kind: str, series: str | None, sources: list[InstanceSource]) -> str:
        # The class-folder images this job trains on (its classes' first recipe.class_images): a
        # folder of another class must not change, so retrain, every adapter.
        used = sorted({slug(source.class_noun) for source in sources})
        # None when the class loss is off (prior_loss_weight 0): none is drawn or put in the set, and
        # editing the folder retrained every series of its class on the same images.
        count = self.recipe.class_images if self.recipe.prior_loss_weight > 0 else 0
        folder = [
            (name, digest) for name in used for digest in self._class_folder.digests.get(name, [])[:count]
        ]
        return training_set_sha256(
            kind=kind,
            series=series,
            base_model=self.base_model,
            model_digest=self.model_digest,
            sources=sources,
            recipe=self.recipe,
            class_folder=folder,
        )

    # -- running --

    def run_pending(self) -> list[AdapterPublished]:
        """Run every job that is due and not yet published; returns what was published."""
        published = []
        failure: Exception | None = None
        unreadable = 0
        # A failed publication waiting out its backoff holds back its own job only. The general adapter's
        # is not planned meanwhile: its plan reads general.json and up to SKUFORGE_LORA_GENERAL_MAX_IMAGES
        # request files. (Before, any one waiting skipped the whole poll: another series' new requests
        # waited up to PUBLICATION_BACKOFF_MAX_S for it.)
        waiting = self._general_skipped()  # a publication waiting out its backoff
        try:
            jobs = self.plan(general=waiting is None)
        except Exception as exc:
            raise PlanningFailed(exc) from exc
        # A job no longer planned (its inputs changed: another adapter) forgets its failed publications.
        planned = {job.adapter_id for job in jobs}
        self._backoffs = {
            key: wait
            for key, wait in self._backoffs.items()
            if key[0] in planned or (wait.general and waiting is not None)
        }
        for job in jobs:
            if self._stop.is_set():
                # Asked to stop (SIGTERM) while an earlier job published: no other job begins (building
                # a set composites and paints for minutes); the next start plans them again.
                break
            # One job's fault (a store hiccup while building its set) must not hold back the others:
            # they run, and the first fault is raised at the end (logged, retried at the next poll).
            try:
                event = self.run_job(job)
            except TrainingInterrupted:
                raise
            except LeaseLost as exc:
                # Another trainer runs the job now: neither a failure nor a retry of this one's.
                log.warning(str(exc), extra={"adapter_id": job.adapter_id})
                continue
            except UnreadableRecord as exc:
                # Raised at every poll for ever, it showed only as `retried` and the last error. Not
                # rebuilt: which adapter the series serves, or its publication count, is the operator's.
                unreadable += 1
                log.error(
                    f"adapter left out: {exc.cause}; {exc.fix}",
                    extra={"adapter_id": job.adapter_id, "key": exc.key, "reason": exc.reason},
                )
                continue
            except PublicationFailed as exc:
                if not exc.tried:  # nothing sent, nothing new to say; another job's fault is raised first
                    waiting = waiting or _without_frames(exc)
                    continue
                # Trained and registered: the broker is to blame, not the GPU, the model or the photos.
                # The one line for this try: poll does not log it again.
                log.error(
                    f"{exc.topic} not sent; the adapter is registered, and {exc.outlook}; the others go on",
                    extra={"adapter_id": exc.adapter_id, "topic": exc.topic, "reason": exc.reason},
                )
                failure = failure or _without_frames(exc)
                continue
            except RegistrationTakenOver as exc:
                # No store's fault: another registration of the id (the CLI's, a second trainer's) took the
                # lock over while this one paused holding it. Called the registry failing, it sent the
                # operator to a store that was not at fault.
                log.warning(
                    "another registration of the adapter took its registration lock over, so it was not "
                    "published; it is registered again at the next poll, not trained again; the others go on",
                    extra={"adapter_id": job.adapter_id, "reason": _one_line(exc)},
                )
                failure = failure or _without_frames(exc)
                continue
            except TransientError as exc:
                # "training job failed" sent the operator to the GPU, the model and the photos, where a
                # bucket refused the weights or the registry was away: its name and uri are said instead.
                failed = self._store_failed(exc)
                log.error(
                    f"{failed.where} failed a job; its training is not at fault, and it is retried at the "
                    "next poll, resumed; the others go on",
                    extra={"adapter_id": job.adapter_id, "store": failed.where, "reason": failed.reason},
                )
                failure = failure or _without_frames(failed)
                continue
            except Exception as exc:
                # The one line for this attempt, with its traceback; its notes (_fail_or_count's) say
                # which attempt it was, or why it is not counted.
                log.error(
                    "training job failed; it is tried again at the next poll; the others go on",
                    extra={"adapter_id": job.adapter_id, "reason": _one_line(exc)},
                    exc_info=True,
                )
                failure = failure or _without_frames(exc)
                continue
            if event is not None:
                published.append(event)
        self.metrics.unreadable.labels("published").set(unreadable)
        if failure is not None:
            self._logged_failure = failure  # logged above, with its job: poll does not log it again
            raise failure
        if waiting is not None:
            raise waiting
        return published

    def _skipped(self, adapter_id: str) -> PublicationFailed | None:
        """This poll's skip of ``adapter_id``'s failed publication (refused, or the broker away) while it
        waits out its backoff (``PublicationBackoff``), then one poll nearer its try; None when none
        failed, or its try is due."""
        for (failed_id, _), backoff in self._backoffs.items():
            if failed_id == adapter_id and backoff.polls_left > 0:
                backoff.polls_left -= 1
                return PublicationFailed(
                    adapter_id, backoff.fault, skipped_polls=backoff.polls_left, tried=False
                )
        return None

    def _general_skipped(self) -> PublicationFailed | None:
        """``_skipped`` for the general adapter's failed publication, if one failed."""
        for (adapter_id, _), backoff in self._backoffs.items():
            if backoff.general:
                return self._skipped(adapter_id)
        return None

    def _store_failed(self, exc: TransientError) -> StoreFailed:
        """``exc`` named by the store it came from: the registry raises its store's faults as its own
        (``RegistryStoreFailed``); the rest are the object store's. Told by the registry's uri in the
        words before, a fault of an object store in a folder of the registry's was the registry's."""
        if isinstance(exc, RegistryStoreFailed):
            return StoreFailed(f"the adapter registry ({self.registry_from})", exc)
        return StoreFailed("the object store (SKUFORGE_STORE_URI)", exc)

    def run_job(self, job: Job) -> AdapterPublished | None:
        """Train (or resume), register and publish one job under its series' lease; None if it was
        already published, or another trainer holds the lease (skipped this poll). ``LeaseLost`` when
        another took the lease over meanwhile: nothing more of the job was written."""
        skipped = self._skipped(job.adapter_id)
        if skipped is not None:  # before any read: the job's result and weights are read to publish
            raise skipped
        marker = f"{PREFIX}/published/{job.adapter_id}.json"
        if job.kind != "general" and self._published_as_current(job, marker):
            return None  # every series at every poll: no lease taken (a write) to find nothing to do
        lease = self.leases.take(self._current_key(job).rsplit("/", 1)[1])
        if lease is None:
            return None
        self._lease = lease
        try:
            return self._run_leased(job, marker)
        finally:
            self._lease = None
            lease.release()

    def _published_as_current(self, job: Job, marker: str) -> bool:
        """Whether ``job``'s adapter is published and its series' pointer names it, nothing under way:
        what ``_run_leased`` would find and return None on, without writing. Its faults are its."""
        if not self.store.exists(marker):
            return False
        try:
            pointer = self._current(job)
        except UnreadableRecord:
            return False  # said by _run_leased
        return pointer == CurrentPointer(job.adapter_id, None, None)

    def _still_leased(self) -> None:
        """``LeaseLost`` unless the running job's lease is still this trainer's: asked before each write."""
        if self._lease is not None:
            self._lease.check()

    def _run_leased(self, job: Job, marker: str) -> AdapterPublished | None:
        job_prefix = f"{PREFIX}/jobs/{job.sha256}"
        if self.store.exists(marker):
            if job.kind == "general" and self._general_in_flight_now():
                # Its schedule is written after its marker (``_publish``): the store away between the
                # two left it under way, planned again at every poll and never counted.
                self._general_published(job)
            # Published before: redelivery, restart, or nothing new in the series. No retraining; but a
            # recipe, model or membership rolled back to this training set finds a later adapter of the
            # series newest in the registry, which the generator kept serving: made current again.
            pointer = self._current(job)
            if pointer is None:
                # Published before the current pointers, or a damaged pointer deleted: the adapter the
                # generator serves is the one last published. Taking this job's as current instead
                # missed a real roll-back, and the generator kept serving the later adapter.
                pointer = CurrentPointer(self._served_by_trainer(job) or job.adapter_id, None, None)
                self.store.put_json(self._current_key(job), pointer.record())
            elif pointer.under_way is not None:  # a roll-back's records cut short: its marker's count first
                self._count_publication(pointer.adapter_id, pointer.under_way)
                pointer = pointer._replace(under_way=None)
                self.store.put_json(self._current_key(job), pointer.record())
            current, _, unpublished = pointer
            # An adapter registered since whose event was not sent (refused, the broker away, a crash) is
            # the one the generator serves: this job's adapter, current as published, is not served.
            if current == job.adapter_id and unpublished is None:
                self._general_up_to_date(job)
                return None
            if not self.registry.is_registered(job.adapter_id):
                # Registered before its marker was written, so gone means `skuforge adapters remove`:
                # an operator took it out as painting the wrong thing, and it stays out. Recorded as
                # current, so the next polls do not come back to it; the series trains anew when
                # its photos change.
                log.warning(
                    "training set rolled back to an adapter removed from the registry: it stays removed, "
                    "and the series gets a new adapter when its photos change",
                    extra={"adapter_id": job.adapter_id, "last_published": current},
                )
                self.store.put_json(self._current_key(job), {"adapter_id": job.adapter_id})
                self._general_up_to_date(job)
                return None
            log.info(
                "training set rolled back to an adapter published before; it is made current again",
                extra={"adapter_id": job.adapter_id, "replacing": unpublished or current},
            )
            # One more publication than the marker records: a retry (the marker not yet rewritten)
            # counts the same, so it keeps the event id, and the roll-back is not taken for a duplicate.
            # The pointer as stored now: read again in _publish, it was a second read of the same record.
            return self._publish(
                job, job_prefix, marker, publication=self._marker(marker).publication + 1, pointer=pointer
            )
        failed_key = f"{job_prefix}/failed.json"
        if self.store.exists(failed_key):
            if job.kind == "general":
                self._general_failed_for_good(job)
            return None  # cannot train as configured; new inputs (a new hash) or a new recipe retry
        result_key = f"{job_prefix}/result.json"
        if self.store.exists(result_key):
            try:
                self._folder_output(job_prefix)
            except UnreadableRecord as exc:
                # Read at publishing, it raised at every poll for ever. It is only what training wrote:
                # training again (resumed from the job's last checkpoint, the same weights) writes it anew.
                log.warning(
                    "trained job's output cannot be read: it is trained again, resumed from its last "
                    "checkpoint; nothing to do unless it keeps happening",
                    extra={"adapter_id": job.adapter_id, "key": exc.key, "reason": exc.reason},
                )
                self.store.delete(result_key)
        if not self.store.exists(result_key):
            if job.kind == "general":
                self._general_in_flight(job)
            error: Exception | None = None
            try:
                self._train(job, job_prefix, result_key)
            except TrainingInterrupted:
                raise
            except Exception as exc:
                error = _without_frames(exc)
            # Out of the except block: the job's frames (models, optimiser) are gone; give the memory back
            # before the next job loads its own.
            release_memory()
            if isinstance(error, LeaseLost):  # the other trainer's job now: no attempt of this one's counted
                raise error
            if error is not None:
                self._after_failure(job, job_prefix, error)  # raises unless the job failed for good
                if job.kind == "general":
                    self._general_failed_for_good(job)
                return None
        return self._publish(job, job_prefix, marker)

    def _current_key(self, job: Job) -> str:
        """Where the adapter last published for ``job``'s series (or the general one) is named."""
        if job.kind == "general":
            return f"{PREFIX}/current/general.json"
        # The series as plan() groups it; distinct series may share a slug, never this digest.
        series = (job.series or "").strip().casefold()
        return f"{PREFIX}/current/series-{slug(series)}-{sha256_hex(series.encode())[:16]}.json"

    def _current(self, job: Job) -> CurrentPointer | None:
        """``job``'s series' pointer (``CurrentPointer``); None before the current pointers.
        ``UnreadableRecord`` when the pointer is cut short, not JSON or names no adapter."""
        key = self._current_key(job)
        try:
            data = self.store.get_bytes(key)
        except ObjectMissing:
            return None
        try:
            pointer = json.loads(data)
            if not (isinstance(pointer, dict) and isinstance(pointer.get("adapter_id"), str)):
                raise ValueError('not {"adapter_id": "<the adapter last published for the series>"}')
            under_way = pointer.get("publication")
            if under_way is not None and (isinstance(under_way, bool) or not isinstance(under_way, int)):
                raise ValueError(f"publication is {under_way!r:.40}, not a number")
            unpublished = pointer.get("unpublished")
            if unpublished is not None and not isinstance(unpublished, str):
                raise ValueError(f"unpublished is {unpublished!r:.40}, not an adapter id")
        except ValueError as exc:
            raise UnreadableRecord(
                key,
                exc,
                'fix it ({"adapter_id": "<the newest of the series in `skuforge adapters list`>"}), or '
                "delete it: it is then rebuilt from the adapter the generator serves for the series",
            ) from None
        return CurrentPointer(str(pointer["adapter_id"]), under_way, unpublished)

    def _marker(self, marker: str) -> AdapterPublished:
        """The event an adapter's ``published/`` marker records (``UnreadableRecord`` if it cannot be
        read)."""
        try:
            # As its event is read from the topic: a series the contract refuses since reads escaped.
            return AdapterPublished.model_validate_json(
                self.store.get_bytes(marker), extra=READ_EXTRA, context=READ_FROM_TOPIC
            )
        except ValidationError as exc:
            raise UnreadableRecord(
                marker,
                exc,
                "fix it, or delete it: the adapter is then published again as a first publication "
                "(trained again if its jobs/ folder has expired)",
            ) from None

    def _count_publication(self, adapter_id: str, publication: int) -> None:
        """Have ``adapter_id``'s marker count ``publication``, a roll-back its series' pointer says was
        published (the event is sent before the pointer is written) when the store went away before the
        marker was rewritten: counting one fewer, the next roll-back to it took that event's id, which
        consumers drop. A marker deleted since is left so (its count starts again, docs/ops.md)."""
        marker = f"{PREFIX}/published/{adapter_id}.json"
        try:
            last = self._marker(marker)
        except ObjectMissing:
            return
        if last.publication < publication:
            self.store.put_json(marker, last.model_copy(update={"publication": publication}))

    def _served_by_trainer(self, job: Job) -> str | None:
        """The adapter the generator picks for ``job``'s series (``resolve_adapter``, the general one for
        the general job) when this trainer published it; None for none, or one an operator registered
        by hand (it stays served, as it does while the pointer is intact)."""
        choice = resolve_adapter(self.registry.list(), series=job.series, base_model=self.base_model)
        if choice.adapter_id is None or choice.reason != ("general" if job.kind == "general" else "series"):
            return None
        if not self.store.exists(f"{PREFIX}/published/{choice.adapter_id}.json"):
            return None
        return choice.adapter_id

    def _publish(
        self,
        job: Job,
        job_prefix: str,
        marker: str,
        *,
        publication: int = 1,
        pointer: CurrentPointer | Literal["unread"] | None = "unread",
    ) -> AdapterPublished:
        """Register the trained job's weights (unless the generator already picks them, their registry
        copy whole: registered again for a roll-back), publish, then record it: the general schedule,
        the series' current adapter, and last the published marker (a roll-back's pointer names its
        publication until the marker is written, and is then written again without it). A publication
        the topic (or an ACL) refused for good, or the broker did not take, is sent again only once its
        backoff (``PublicationBackoff``) is over. ``pointer`` is the series' ``current/`` pointer as its
        caller read (and wrote) it, a roll-back's; by default it is read here."""
        backoff = self._backoffs.get((job.adapter_id, publication))  # its try is due (run_job)
        result, weights = self._trained(job, job_prefix, marker)
        # Cut to what the event may carry, in the registry alike: a photo's tags go into its prompt whole,
        # and 64 tags of 200 characters (a sku.captioned the schema takes) failed the event at every poll.
        # Training read the first 77 tokens of each (CLIP's length) anyway. A character the contract refuses
        # since (a newline of an accepted/ request or a result.json stored before: a roll-back publishes
        # again from one) is written escaped, as the topic's reader takes it, not refused at every poll.
        prompts = [
            escaped_within(prompt, MAX_TRAINING_PROMPT_CHARS, NOT_ONE_LINE)
            for prompt in result["training_prompts"]
        ]
        # The series' pointer, read once for both records below: the adapter named unpublished before it is
        # registered, a roll-back cut short counted once the event is sent. Read again after the send, it
        # held what this read found, plus only this trainer's own `unpublished`. Another trainer publishing
        # the series meanwhile is not guarded against by reading twice: the pointer's writes are plain puts
        # (the last one wins), and a second read only narrowed the window in which its roll-back cut short
        # went uncounted, from the registering and the send to the moments before the rewrite.
        replaced = pointer
        if isinstance(replaced, str):  # not read by the caller
            try:
                replaced = self._current(job)
            except UnreadableRecord:
                replaced = None  # rewritten once the event is sent
        # Registered and the newest (a retry after a lost ack or a crash), its weights there whole: not
        # written again. Else (a roll-back; a marker deleted, so a roll-back taken for a first
        # publication; the registry's weights lost or altered since) registered again: a new
        # created_at makes it the newest, the one the generator picks.
        newest = resolve_adapter(self.registry.list(), series=job.series, base_model=self.base_model).adapter
        if (
            newest is not None
            and newest.adapter_id == job.adapter_id
            and newest.training_set_sha256 == job.sha256
            and self._registered_whole(newest)
        ):
            metadata = newest
        else:
            self._still_leased()
            self._unpublished(job, replaced)
            metadata = self.registry.register(
                job.adapter_id,
                weights,
                kind=job.kind,
                base_model=self.base_model,
                series=job.series,
                training_prompts=prompts,
                training_set_sha256=job.sha256,
            )
        event = AdapterPublished(
            adapter_id=job.adapter_id,
            kind=job.kind,
            series=job.series,
            base_model=self.base_model,
            registry_uri=self.registry.store.uri_for(job.adapter_id),
            weights_sha256=metadata.weights_sha256,
            training_set_sha256=job.sha256,
            sku_ids=result.get("sku_ids") or sorted({s.sku_id for s in job.sources}),
            instance_images=result["instance_images"],
            class_images=result["class_images"],
            steps=result["steps"],
            final_loss=result["final_loss"],
            resumed_from_step=result["resumed_from_step"],
            training_prompts=prompts,
            publication=publication,
        )
        event = fitted_to_a_record(event)
        self._still_leased()
        try:
            self.publish(event)
        except Exception as exc:  # refused for good (RecordRefused, PublishForbidden), the broker away, a bug
            if not isinstance(exc, TransientError):
                # Not the broker's (PublicationFailed says so): where it was raised is what mends it, logged
                # here, before the backoff keeps the fault without its frames.
                log.error(
                    f"{ADAPTER_PUBLISHED.name} could not be made or handed to the producer: a fault of the "
                    "trainer's own, not the broker's",
                    extra={"adapter_id": job.adapter_id},
                    exc_info=True,
                )
            failures = backoff.failures + 1 if backoff is not None else 1
            most = max(1, round(PUBLICATION_BACKOFF_MAX_S / self.settings.lora_poll_s))
            wait = min(2 ** min(failures - 1, 30), most)
            self._backoffs[(job.adapter_id, publication)] = PublicationBackoff(
                _without_frames(exc), failures, wait, general=job.kind == "general"
            )
            raise PublicationFailed(job.adapter_id, exc, skipped_polls=wait) from exc
        self._backoffs.pop((job.adapter_id, publication), None)
        # Sent (a second send of the job has the same event id); its records are the lease holder's.
        self._still_leased()
        # Only after the broker has the event: a crash before the marker is written publishes again (the
        # same event id). The general schedule last: written before the pointer and the marker, the store
        # away in between left the job counted and no longer under way, and no poll came back to them.
        if replaced is not None and replaced.under_way is not None and replaced.adapter_id != job.adapter_id:
            # A roll-back cut short, counted first. Its marker damaged: the pointer is rewritten below, and
            # the marker is reported when its job is planned.
            with contextlib.suppress(UnreadableRecord):
                self._count_publication(replaced.adapter_id, replaced.under_way)
        if publication == 1:
            self.store.put_json(self._current_key(job), {"adapter_id": job.adapter_id})
            self.store.put_json(marker, event)
        else:
            # A roll-back: the pointer names its publication until the marker counts it, so that the
            # store away between the two does not lose the count (``_count_publication``).
            under_way = CurrentPointer(job.adapter_id, under_way=publication, unpublished=None)
            self.store.put_json(self._current_key(job), under_way.record())
            self.store.put_json(marker, event)
            self.store.put_json(self._current_key(job), {"adapter_id": job.adapter_id})
        if job.kind == "general":
            self._general_published(job)
        self.metrics.jobs.labels("published").inc()
        log.info("adapter published", extra={"adapter_id": job.adapter_id, "steps": result["steps"]})
        return event

    def _unpublished(self, job: Job, pointer: CurrentPointer | None) -> None:
        """Record in ``job``'s series' pointer (``pointer``, as read) that its adapter is about to be
        registered (the newest, so served) before its event is sent. Its event refused for good, the
        pointer named only the adapter last published: the set rolled back to that one found it current,
        and the generator went on serving this one. No pointer yet (the series' first adapter), or one
        that cannot be read (None), is left as it is: the pointer is written once the event is sent."""
        if pointer is not None and pointer.unpublished != job.adapter_id:
            self.store.put_json(self._current_key(job), pointer._replace(unpublished=job.adapter_id).record())

    def _registered_whole(self, metadata: AdapterMetadata) -> bool:
        """Whether the registry's copy of the weights ``metadata`` names is there and matches its sha256.
        Published unchecked, weights lost or altered there failed in the generator, at every request."""
        weights_key = f"{metadata.adapter_id}/{metadata.weight_name}"
        try:
            self.registry.registered_weights(metadata)
        except BadInput as exc:  # ObjectMissing, ChecksumMismatch; a store away is retried
            log.warning(
                "the registry's copy of the adapter's weights is lost or altered: registered again from "
                "the job's weights",
                extra={"adapter_id": metadata.adapter_id, "key": weights_key, "reason": _one_line(exc)},
            )
            return False
        return True

    def _trained(self, job: Job, job_prefix: str, marker: str) -> tuple[dict[str, Any], bytes]:
        """The trained job's result record and weights: from its folder, or, for a job published before
        whose folder has expired (docs/ops.md allows it once published) or is damaged, from its marker and
        the registry's copy. Before, a roll-back to such a job failed every poll on the missing folder,
        and the generator kept serving the adapter trained on the SKUs that had left the series."""
        try:
            return self._folder_output(job_prefix)  # an unpublished job's is checked first (run_job)
        except (ObjectMissing, UnreadableRecord) as unpublished:
            try:
                # Read, not asked for: deleted between a look and the read, it raised ObjectMissing.
                published = self._marker(marker)
            except ObjectMissing:
                raise unpublished from None
        fix = (
            f"delete its published marker ({marker}) to train it again (it is then registered again), "
            f"or take it out with `skuforge adapters remove {job.adapter_id}`"
        )
        metadata_uri = self.registry.store.uri_for(f"{job.adapter_id}/{METADATA_FILE}")
        try:
            metadata = self.registry.get(job.adapter_id)
        except ValidationError as exc:
            raise UnreadableRecord(
                metadata_uri, exc, fix, "its metadata in the registry cannot be read"
            ) from None
        except ObjectMissing as exc:
            # Its metadata names another adapter (a folder copied by hand), or it was removed since run_job
            # looked: raised, it failed the poll, at every poll for the first, naming no file.
            raise UnreadableRecord(
                metadata_uri, exc, fix, "it is not registered (its metadata is gone or names another adapter)"
            ) from None
        try:
            weights = self.registry.registered_weights(metadata)
        except BadInput as exc:
            # Lost or failing their checksum (ObjectMissing, ChecksumMismatch): raised at every poll for
            # ever, seen only as `retried`. A store away is a TransientError, still retried.
            cause = "lost" if isinstance(exc, ObjectMissing) else "do not match their sha256"
            raise UnreadableRecord(
                self.registry.weights_uri(metadata), exc, fix, f"its weights in the registry {cause}"
            ) from None
        return published.model_dump(mode="json"), weights

    def _folder_output(self, job_prefix: str) -> tuple[dict[str, Any], bytes]:
        """The result record and weights training wrote to the job's folder. ``ObjectMissing`` without
        a result; ``UnreadableRecord`` when the result, or the weights it follows, are damaged or lost."""
        result_key, weights_key = f"{job_prefix}/result.json", f"{job_prefix}/weights.safetensors"
        try:
            result = _checked_result(self.store.get_bytes(result_key))
        except ValueError as exc:
            raise UnreadableRecord(result_key, exc, "it is trained again at the next poll") from None
        try:
            weights = self.store.get_bytes(weights_key)
            lora_rank(weights)  # what registering reads: a copy cut short is refused there, at every poll
        except (ObjectMissing, ValueError) as exc:
            raise UnreadableRecord(weights_key, exc, "it is trained again at the next poll") from None
        return result, weights

    def _after_failure(self, job: Job, job_prefix: str, error: Exception) -> None:
        """Mark the job failed, or count the attempt and raise ``error`` (retried at the next poll).

        Not transient, so failed at once: the job's own fault (a ``TrainingError``; every photo of
        the set deleted, altered since it was recorded or refused by the compositor, ``BadInput``):
        the same inputs would fail the same way at every poll. A store away (``TransientError``), a
        setting met mid-job (``ConfigError``: the deployment's fault) or a file that cannot be read
        (``OSError``: the model folder being copied again, a mount away) is retried, uncounted, and so
        is the GPU out of memory: the generator's Triton may share the GPU (deploy/gpu), and a job failed
        for a neighbour's peak would stay failed. Anything else (a bug, NaN paint) is retried until
        ``JOB_MAX_ATTEMPTS`` attempts have failed, then failed with the last reason, its type and where
        it was raised (a ``ValueError`` of torch's at a training step is such a fault, not a refusal).
        """
        _drop_attempt_notes(error)
        if isinstance(error, (TransientError, ConfigError, OSError)):
            # A store away, or the deployment's fault (a setting met mid-job, a model folder unreadable
            # for a moment): not the job's. Counted, three polls (15 s by default) would fail the job
            # for good, and fixing it would not bring it back (its hash holds the folder's fingerprint).
            raise error
        if _out_of_memory(error):
            # A note, not a line of its own: run_pending logs the job's fault once, with its traceback.
            error.add_note(_OUT_OF_MEMORY_NOTE)
            raise error
        reason = str(error)  # a refusal's reason, as the failed.json of earlier releases hold it
        self._still_leased()  # its attempts and failure are the job's holder's to write
        if not isinstance(error, (TrainingError, BadInput)):
            reason = _one_line(error)  # its type says more than its message alone
            attempts_key = f"{job_prefix}/attempts.json"
            attempts = 1 + self._attempts_before(job, attempts_key)
            self.store.put_json(attempts_key, {"attempts": attempts, "last_reason": reason})
            if attempts < JOB_MAX_ATTEMPTS:
                error.add_note(f"attempt {attempts} of {JOB_MAX_ATTEMPTS}")  # said where run_pending logs it
                raise error
            reason = f"{attempts} attempts failed, the last with {reason}"
        self.store.put_json(f"{job_prefix}/failed.json", {"adapter_id": job.adapter_id, "reason": reason})
        self.metrics.jobs.labels("failed").inc()
        log.error("training job cannot run", extra={"adapter_id": job.adapter_id, "reason": reason})

    def _attempts_before(self, job: Job, attempts_key: str) -> int:
        """The failed attempts ``attempts.json`` counts; 0 when it is missing, and when it cannot be read
        (a warning names it): raised here, the count itself failed, and the job was retried for ever."""
        if not self.store.exists(attempts_key):
            return 0
        try:
            record = json.loads(self.store.get_bytes(attempts_key))
            attempts = record.get("attempts", 0) if isinstance(record, dict) else None
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
                raise ValueError(f"not {{'attempts': <a number of at least 0>}} but {record!r:.80}")
        except ValueError as exc:
            log.warning(
                "attempts file cannot be read: the count starts again from this attempt, and the job is "
                f"marked failed after {JOB_MAX_ATTEMPTS} in all; nothing to do unless it keeps happening",
                extra={"adapter_id": job.adapter_id, "key": attempts_key, "reason": _one_line(exc)},
            )
            return 0
        return attempts

    def _train(self, job: Job, job_prefix: str, result_key: str) -> None:
        try:
            self._train_uncounted(job, job_prefix, result_key)
        except TrainingInterrupted:
            # Stopped while building, encoding or training the set: resumed (or built again) next start.
            self.metrics.jobs.labels("interrupted").inc()
            raise

    def _train_uncounted(self, job: Job, job_prefix: str, result_key: str) -> None:
        set_prefix = f"{PREFIX}/sets/{job.sha256}"
        training_set = load_training_set(self.store, set_prefix, job.sha256)
        if training_set is None:  # built once; a resumed job reads its index, not the images
            try:
                training_set = build_training_set(
                    self.store,
                    set_prefix,
                    job.sha256,
                    job.sources,
                    self.recipe,
                    class_folder=self._class_folder.images,
                    max_pixels=self.max_image_pixels,
                    max_bytes=self.max_image_bytes,
                    paint_class_images=self._paint_class_images,
                    should_stop=self._stop_asked,
                )
            finally:
                # The painter is a whole pipeline on the training device: not kept beside the
                # models about to train (reloaded if another job paints; sets are built once).
                self._painter = None
            release_memory()
        class_items = trained_class_items(training_set, self.recipe)
        log.info(
            "training",
            extra={
                "adapter_id": job.adapter_id,
                "instance_images": len(training_set.instance_items),
                "class_images": len(class_items),
            },
        )
        result = train_lora(
            self.model_dir,
            training_set,
            self.recipe,
            self.store,
            job_prefix,
            device=_device(self.settings),
            on_step=self._stepped,
            should_stop=self._stop_asked,
        )
        self._still_leased()
        self.store.put_bytes(f"{job_prefix}/weights.safetensors", result.weights)
        prompts = sorted({item.prompt for item in [*training_set.instance_items, *class_items]})
        self.store.put_json(
            result_key,
            {
                "steps": result.steps,
                "final_loss": result.final_loss,
                "resumed_from_step": result.resumed_from_step,
                "stopped_early": result.stopped_early,
                "instance_images": len(training_set.instance_items),
                "class_images": len(class_items),
                "training_prompts": prompts[:50],
                # The SKUs it trained on: a SKU whose photo was left out of the set is not one of them.
                "sku_ids": sorted({item.sku_id for item in training_set.instance_items if item.sku_id}),
            },
        )

    def _stop_asked(self) -> bool:
        """``should_stop`` of a job's set and training: a stop asked (SIGTERM), or ``LeaseLost`` once the
        lease's heartbeat found another trainer holding it."""
        if self._lease is not None:
            self._lease.raise_if_lost()
        return self._stop.is_set()

    def _stepped(self, step: int, loss: float) -> None:
        """``on_step`` of training, after each step and before its checkpoint: a step that checkpoints
        (every ``checkpoint_every``, and the last) first reads the lease, so that one lost writes none."""
        self.metrics.steps.inc()
        if step % self.recipe.checkpoint_every == 0 or step >= self.recipe.max_steps:
            self._still_leased()
        elif self._lease is not None:
            self._lease.raise_if_lost()

    def _paint_class_images(self, prompt: str, count: int, seed: int, size: int) -> Iterator[UInt8Array]:
        """Class images from the base model: its inpainting pipeline with the whole canvas masked, each
        handed on as it is painted (returned in a list, SKUFORGE_LORA_CLASS_IMAGES=2000 at 2048 px held
        25 GB until the last was painted).

        The pipeline is loaded at the first image and kept until the job's set is built (``_train``).
        An image that comes out NaN even decoded in float32 raises ``NonFiniteOutput`` (``paint_finite``).
        A stop request (SIGTERM) is heard after each denoising step: ``TrainingInterrupted``, and the
        set, not marked complete, is built again when the job runs next.
        """
        import torch
        from PIL import Image

        from shared.generation.diffusion import load_inpaint_pipeline

        if self._painter is None:
            device = torch.device(_device(self.settings))
            dtype = getattr(torch, painter_dtype(self.paint_dtype, device.type))
            self._painter = load_inpaint_pipeline(
                self.model_dir, architecture="sd", device=device, dtype=dtype
            )
        canvas = Image.new("RGB", (size, size), (127, 127, 127))
        everything = Image.new("L", (size, size), 255)
        painted = 0

        def stop_if_asked(step: int | None = None) -> None:
            # Heard after every denoising step, not only between images: the worker's stop() waits
            # 120 s, and one 2048-px image's 25 steps on a CPU take longer.
            if self._stop.is_set():
                within = "" if step is None else f" (the next one after step {step + 1} of {PAINT_STEPS})"
                raise TrainingInterrupted(
                    f"stopped painting class images: {painted} of {count} for {prompt!r}{within}; "
                    "they are painted again when the job runs next"
                )

        for index in range(count):
            stop_if_asked()
            # A CPU generator: the same noise, so the same class images, on a GPU as on a CPU.
            generator = torch.Generator(device="cpu").manual_seed(seed * 7919 + index)
            output = paint_finite(
                self._painter, prompt=prompt, image=canvas, mask_image=everything, height=size, width=size,
                strength=1.0, num_inference_steps=PAINT_STEPS, generator=generator, after_step=stop_if_asked,
            )[0]  # fmt: skip
            painted += 1
            yield np.clip(np.rint(output * 255.0), 0, 255).astype(np.uint8)


def _instance_sources(captioned: SkuCaptioned, min_plain_background: float) -> list[InstanceSource]:
    """The SKU's training photos: the ones the generator cuts the product from (``cutout_sources``).

    A cut-out from a cluttered in-store photo is often a hand or the neighbouring product; the
    generator does not paste those, and an adapter trained on them would learn the wrong product. Of a
    SKU with no photo on a plain background, the sources are marked ``cluttered``: the set is built,
    as the generator cuts, from each one's largest blob and from those whose blob is one object.
    """
    usable = [photo for photo in captioned.photos if photo.usable and photo.mask is not None]
    cluttered = cut_from_cluttered_photos(usable, min_plain_background)
    sources = []
    for photo in cutout_sources(usable, min_plain_background):
        assert photo.mask is not None  # filtered above; for mypy
        tags = [*photo.colours[:2], photo.shape if photo.shape != "other" else "", photo.view, *photo.tags]
        sources.append(
            InstanceSource(
                sku_id=captioned.sku.sku_id,
                photo_id=photo.photo_id,
                image_uri=photo.image.uri,
                image_sha256=photo.image.sha256,
                mask_uri=photo.mask.uri,
                mask_sha256=photo.mask.sha256,
                instance_prompt=captioned.instance_prompt,
                class_noun=captioned.class_noun,
                class_prompt=captioned.class_prompt,
                tags=tuple(t for t in tags if t),
                cluttered=cluttered,
            )
        )
    return sources


class ClassImages(Sequence[UInt8Array]):
    """The images of one class folder a job trains on, each read when it is asked for (a set being
    built writes one at a time), at the training resolution, and checked against the digest start-up
    took of it: held all at once, as read at start-up, SKUFORGE_LORA_CLASS_IMAGES=2000 at 2048 px was
    25 GB a class for the process's life. A file changed or gone since start-up is a ``ConfigError``
    naming it (retried until the trainer is restarted: the job's identity names what start-up read)."""

    def __init__(
        self, files: list[Path], digests: list[str], *, resolution: int, max_pixels: int, max_bytes: int
    ) -> None:
        self.files, self.digests = files, digests
        self.resolution, self.max_pixels, self.max_bytes = resolution, max_pixels, max_bytes

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, index: int) -> UInt8Array: ...

    @overload
    def __getitem__(self, index: slice) -> ClassImages: ...

    def __getitem__(self, index: int | slice) -> UInt8Array | ClassImages:
        if isinstance(index, slice):
            return ClassImages(
                self.files[index], self.digests[index], resolution=self.resolution,
                max_pixels=self.max_pixels, max_bytes=self.max_bytes,
            )  # fmt: skip
        path = self.files[index]
        pixels, digest = _read_class_image(path, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        if digest != self.digests[index]:
            raise ConfigError(
                f"SKUFORGE_LORA_CLASS_IMAGES_DIR: {path} changed since the trainer started; restart it to "
                "train on the folder as it is now"
            )
        return square_image(pixels, self.resolution)


@dataclass(frozen=True)
class ClassFolder:
    """Real class images by class slug (read when a set is built), and the sha256 of each as read at
    start-up (a job's identity names the ones it uses)."""

    images: dict[str, ClassImages]
    digests: dict[str, list[str]]


def _read_class_image(path: Path, *, max_pixels: int, max_bytes: int) -> tuple[UInt8Array, str]:
    """A class image's pixels and their sha256; ``ConfigError`` naming the file when it cannot be used."""
    try:
        pixels = pixel_array(decode_image(path.read_bytes(), max_pixels=max_pixels, max_bytes=max_bytes))
    except (BadInput, OSError) as exc:
        raise ConfigError(
            f"SKUFORGE_LORA_CLASS_IMAGES_DIR: {path} cannot be used ({exc}); fix or remove it"
        ) from None
    # The array's own buffer, not a tobytes copy of it: the same digest without a second image.
    return pixels, hashlib.sha256(pixels.data).hexdigest()


def _read_class_folder(
    directory: str | None, resolution: int, *, most: int, max_pixels: int, max_bytes: int
) -> ClassFolder:
    """``<dir>/<class slug>/*.png|jpg``, the first ``most`` of each class (SKUFORGE_LORA_CLASS_IMAGES,
    by name: the ones a job trains on), each read once at start-up for its digest and not kept
    (``ClassImages`` reads it again when a set is built; every file of a large folder was read, however
    few were used). A file that does not decode is a ``ConfigError`` naming it; a folder whose name is
    no class slug (``Soda Can/``: the class "soda can" looks in ``soda-can/``) is never used, and a
    warning says so, as it names a folder with fewer than ``most`` images (its class trains on those)."""
    if directory is None:
        return ClassFolder({}, {})
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"SKUFORGE_LORA_CLASS_IMAGES_DIR={directory} is not a folder")
    images: dict[str, ClassImages] = {}
    digests: dict[str, list[str]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not _SLUG.fullmatch(class_dir.name):
            log.warning(
                "class image folder never used: class folders are named by the class's slug",
                extra={"folder": str(class_dir), "expected_name": slug(class_dir.name)},
            )
            continue
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:most]
        if len(files) < most:
            # Not refused: fewer prior images still train, and one short folder must not stop every
            # series; but the recipe asked for more, and the operator should know which folder is short.
            log.warning(
                "class image folder holds fewer images than SKUFORGE_LORA_CLASS_IMAGES: its class trains "
                "on the ones it has (none: painted by the base model); add images or lower the setting",
                extra={"folder": str(class_dir), "images": len(files), "wanted": most},
            )
        if not files:
            continue
        digests[class_dir.name] = [
            _read_class_image(path, max_pixels=max_pixels, max_bytes=max_bytes)[1] for path in files
        ]
        images[class_dir.name] = ClassImages(
            files, digests[class_dir.name], resolution=resolution, max_pixels=max_pixels, max_bytes=max_bytes
        )
    return ClassFolder(images, digests)


# What ``slug`` makes: a folder named otherwise is never looked up (a long slug may end in "-").
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def _spread(keys: list[str], most: int) -> list[str]:
    """At most ``most`` of ``keys``, evenly spaced over them (all when there are no more)."""
    if len(keys) <= most:
        return keys
    picks = np.linspace(0, len(keys) - 1, num=most).round().astype(int)
    return [keys[index] for index in sorted(set(picks.tolist()))]


def _device(settings: LoraTrainerSettings) -> str:
    import torch

    if settings.lora_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("SKUFORGE_LORA_DEVICE=cuda but torch sees no CUDA device")
    if settings.lora_device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.lora_device


def painter_dtype(dtype: str, device: str) -> str:
    """The dtype the class painter loads the base model in: SKUFORGE_DIFFUSION_DTYPE, as the generator
    reads it ('auto' = float16 on CUDA, float32 on CPU), so that a model whose float16 VAE overflows
    (NaN class images, the job failed after its attempts) is fixed for the trainer by the setting the
    docs name for the generator. float16 on a CPU trainer is refused (``ConfigError``), as the
    generator refuses it."""
    if dtype == "auto":
        return "float16" if device == "cuda" else "float32"
    if dtype == "float16" and device != "cuda":
        raise ConfigError(
            "SKUFORGE_DIFFUSION_DTYPE=float16 needs CUDA, and the LoRA trainer paints its class images on "
            f"{device} (SKUFORGE_LORA_DEVICE); use float32 or bfloat16"
        )
    return dtype


_TRAINING_PACKAGES = ("torch", "diffusers", "peft", "transformers")


def _missing_training_packages() -> list[str]:
    """The packages of ``_TRAINING_PACKAGES`` this install cannot import (found, not imported: peft
    and transformers take seconds to import, and the first job imports them anyway)."""
    missing = []
    for name in _TRAINING_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module that is None in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def open_trainer(
    shared: Settings,
    *,
    metrics: LoraTrainerMetrics,
    publish: Callable[[AdapterPublished], None],
    trainer: LoraTrainerSettings | None = None,
    diffusion: DiffusionSettings | None = None,
    generation: GenerationSettings | None = None,
) -> LoraTrainer:
    """The worker for these settings: base model folder, adapter registry, recipe.

    ``generation`` gives the generator's cut-out rule (SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND), so
    the trainer trains on the photos the generator pastes. Bad settings raise ``ConfigError``, and
    so does an install without the diffusion extra.
    """
    missing = _missing_training_packages()
    if missing:
        # The CPU image and `pip install 'skuforge[cpu]'` run the other stages without torch; the
        # evaluate extra brings torch alone. Each was a traceback here, or a failure in every job.
        raise ConfigError(
            f"the LoRA trainer needs {', '.join(missing)}, which this install lacks: "
            "pip install 'skuforge[diffusion]'"
        )
    import torch

    trainer = trainer or load_settings(LoraTrainerSettings)
    diffusion = diffusion or load_settings(DiffusionSettings)
    generation = generation or load_settings(GenerationSettings)
    base_model = adapter_base_model(trainer, diffusion)  # before any model is opened: fails fast
    model = trainer.lora_model or diffusion.diffusion_model
    if model is None or "://" in model or not (Path(model) / "model_index.json").is_file():
        raise ConfigError(
            "the LoRA trainer needs a local save_pretrained inpainting folder (model_index.json): set "
            f"SKUFORGE_LORA_MODEL or SKUFORGE_DIFFUSION_MODEL (got {model!r})"
        )
    try:
        check_trainable(Path(model))
    except (TrainingError, OSError) as exc:
        raise ConfigError(f"SKUFORGE_LORA_MODEL / SKUFORGE_DIFFUSION_MODEL: {exc}") from None
    # SKUFORGE_LORA_DEVICE=cuda without CUDA, or float16 class painting on a CPU: refused at start-up,
    # not by every job.
    paint_dtype = painter_dtype(diffusion.diffusion_dtype, _device(trainer))
    torch.set_num_threads(trainer.lora_threads)
    store = open_settings_store(shared)
    registry = AdapterRegistry(diffusion.adapters_store(shared))
    return LoraTrainer(
        store=store,
        registry=registry,
        registry_from=diffusion.adapters_uri_from(),
        settings=trainer,
        model_dir=Path(model),
        base_model=base_model,
        min_plain_background=generation.generation_min_plain_background,
        publish=publish,
        metrics=metrics,
        max_image_pixels=shared.max_image_pixels,
        max_image_bytes=shared.max_image_bytes,
        paint_dtype=paint_dtype,
    )


def adapter_base_model(trainer: LoraTrainerSettings, diffusion: DiffusionSettings) -> str:
    """The base-model label the trainer registers its adapters under: the model it trains.

    The generator (with SKUFORGE_DIFFUSION_BASE_MODEL set) uses only adapters labelled with its
    model. So: SKUFORGE_LORA_BASE_MODEL when set; else, when the trainer trains the generator's
    model, the generator's label (SKUFORGE_DIFFUSION_BASE_MODEL, else the folder's name); else (another
    SKUFORGE_LORA_MODEL) the folder's name, unless the generator filters by a label: then whether
    the two folders hold one model is the operator's to say, and start-up refuses until they do. A
    wrong guess either way hurts: adapters of model X labelled as the generator's model Y are loaded
    and refused for every SKU of the series (adapter_unloadable), and a local copy of Y labelled by
    its folder's name is never used.
    """
    if trainer.lora_base_model is not None:
        return trainer.lora_base_model
    lora_model, generator_model = trainer.lora_model, diffusion.diffusion_model
    trains_generator_model = lora_model is None or (
        generator_model is not None
        and "://" not in generator_model
        and Path(lora_model).resolve() == Path(generator_model).resolve()
    )
    if trains_generator_model:
        model = lora_model or generator_model or "model"
        return diffusion.diffusion_base_model or _folder_name(model)
    assert lora_model is not None  # else the trainer trains the generator's model
    if diffusion.diffusion_base_model is not None:
        raise ConfigError(
            f"SKUFORGE_LORA_MODEL={lora_model} is not the generator's model "
            f"(SKUFORGE_DIFFUSION_MODEL={generator_model}), and the generator uses only adapters "
            f"labelled SKUFORGE_DIFFUSION_BASE_MODEL={diffusion.diffusion_base_model}: set "
            "SKUFORGE_LORA_BASE_MODEL to the name of the model SKUFORGE_LORA_MODEL holds "
            f"({diffusion.diffusion_base_model} if it is a local copy of the generator's model; another "
            "name if not, and the generator will not use those adapters)"
        )
    return _folder_name(lora_model)


def _folder_name(model: str) -> str:
    """The name of the folder ``model`` points at: "." or "sd15/.." named it "" (every adapter trained,
    then refused by the registry at every poll) or "..". Symlinks are not followed: a link's name is
    the label it always gave."""
    return Path(os.path.abspath(model)).name


# A time as long as any the envelope may carry (microseconds written out), to measure a record by.
_LONGEST_PRODUCED_AT = datetime(2000, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


def record_bytes(event: AdapterPublished) -> int:
    """The bytes of the Kafka record ``kafka_publisher`` sends for ``event``, key and envelope, at most
    (its ids are of fixed length; its time is measured at its longest)."""
    event_id = derive_id(LORA_TRAINER.name, event.adapter_id, str(event.publication))
    envelope = make_envelope(
        ADAPTER_PUBLISHED,
        event,
        event_id=event_id,
        sku_id=event.adapter_id,
        trace_id=event_id,
        producer=LORA_TRAINER.name,
        produced_at=_LONGEST_PRODUCED_AT,
    )
    return len(event.adapter_id.encode()) + len(envelope.model_dump_json().encode())


def fitted_to_a_record(event: AdapterPublished) -> AdapterPublished:
    """``event``, its ``sku_ids`` cut to the first (sorted) that fit one Kafka record
    (``MAX_OUTPUT_RECORD_BYTES``), and if it still does not fit, its ``training_prompts`` too.

    The schema takes 50,000 SKU ids of 64 characters (SKUFORGE_LORA_GENERAL_MAX_IMAGES' top): a general
    adapter of 50,000 ids of 20 characters made a 1.15 MB event the producer refused, at every poll for
    ever, its adapter registered and its job under way, so no new general job began. The generator
    finds the adapter in the registry, not in the event; ``instance_images`` counts every image, and the
    job's ``result.json`` keeps every SKU id."""
    if record_bytes(event) <= MAX_OUTPUT_RECORD_BYTES:
        return event
    sku_ids = list(event.sku_ids)
    fits, over = 0, len(sku_ids)  # the most ids that fit lie in [fits, over)
    while over - fits > 1:
        middle = (fits + over) // 2
        if record_bytes(event.model_copy(update={"sku_ids": sku_ids[:middle]})) <= MAX_OUTPUT_RECORD_BYTES:
            fits = middle
        else:
            over = middle
    fitted = event.model_copy(update={"sku_ids": sku_ids[:fits]})
    while record_bytes(fitted) > MAX_OUTPUT_RECORD_BYTES and fitted.training_prompts:
        # 50 prompts of 8,192 characters of a script of 3 bytes a character: 1.2 MB on their own.
        fitted = fitted.model_copy(update={"training_prompts": fitted.training_prompts[:-1]})
    log.warning(
        "adapter.published names fewer SKUs (or training prompts) than the adapter was trained on: "
        "the event must fit one Kafka record; the job's result.json names them all",
        extra={
            "adapter_id": event.adapter_id,
            "sku_ids": f"{len(fitted.sku_ids)} of {len(event.sku_ids)}",
            "training_prompts": f"{len(fitted.training_prompts)} of {len(event.training_prompts)}",
        },
    )
    return fitted


class AdapterPublisher:
    """Publishes ``adapter.published`` (acks=all, waited for); the event id is the adapter's and its
    publication's, so a re-publication after a crash is a duplicate consumers drop, and a roll-back
    (the adapter published again, ``publication`` 2, 3...) is not. ``close`` when the worker stops."""

    def __init__(self, shared: Settings) -> None:
        self._publisher = Publisher(shared, LORA_TRAINER.name)

    def __call__(self, event: AdapterPublished) -> None:
        # The first publication keeps the id it had before publications were counted.
        parts = [event.adapter_id] if event.publication == 1 else [event.adapter_id, str(event.publication)]
        self._publisher.publish(
            ADAPTER_PUBLISHED,
            event,
            sku_id=event.adapter_id,
            event_id=derive_id(LORA_TRAINER.name, *parts),
        )

    def close(self) -> None:
        """Flush and close the Kafka producer (its sender thread and connections)."""
        self._publisher.close()


def kafka_publisher(shared: Settings) -> AdapterPublisher:
    """The worker's ``publish``: ``adapter.published`` to the broker ``shared`` names."""
    return AdapterPublisher(shared)


def build_stage(
    *,
    trainer: LoraTrainerSettings | None = None,
    diffusion: DiffusionSettings | None = None,
    generation: GenerationSettings | None = None,
    **kwargs: Any,
) -> tuple[Stage, LoraTrainer]:
    """The stage (handlers record requests) and its worker (not started); kwargs go to Stage."""
    workers: list[LoraTrainer] = []
    stage = Stage(
        LORA_TRAINER.name,
        default_metrics_port=LORA_TRAINER.default_metrics_port,
        ready=lambda: bool(workers) and workers[0].alive(),  # ready while the worker runs
        **kwargs,
    )
    metrics = LoraTrainerMetrics(stage.metrics.registry)
    publish = kafka_publisher(stage.settings)
    try:
        worker = open_trainer(
            stage.settings,
            metrics=metrics,
            publish=publish,
            trainer=trainer,
            diffusion=diffusion,
            generation=generation,
        )
    except BaseException:
        # Refused settings (ConfigError): left to the garbage collector, the producer's sender thread and
        # broker connection lived on while the refusal (its traceback holds this frame) was held.
        publish.close()
        raise
    workers.append(worker)

    @stage.on_stop
    def stop_the_worker_then_its_producer() -> None:
        # The worker first: a job it runs checkpoints and publishes nothing once the producer is closed.
        # Never closed, the producer's sender thread and broker connections outlived the stage.
        worker.stop()
        publish.close()

    stage.handler(SKU_CAPTIONED)(functools.partial(record_captioned, metrics=metrics))
    stage.handler(GATE_ACCEPTED)(functools.partial(record_accepted, metrics=metrics))
    return stage, worker


def main() -> int:
    """Run the trainer until SIGTERM: the consumer in the main thread, training in a worker thread."""
    stage, worker = build_stage()
    worker.start()
    try:
        return run_stage(stage)
    finally:
        # The stage's stop stopped it already (and closed its producer), unless a second signal ended
        # the stage where it stood, or the stage never ran.
        worker.stop()


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.lora_trainer.stage", main))
