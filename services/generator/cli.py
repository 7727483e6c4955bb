"""``skuforge adapters list|register|remove``: the LoRA adapter registry the diffusion backend reads.

The registry (``shared/generation/adapters.py``) is at ``SKUFORGE_DIFFUSION_ADAPTERS_URI``, by default
``<SKUFORGE_STORE_URI>/adapters``; the generation server picks adapters from it per request.
"""

from __future__ import annotations

import json
import sys

from schemas.events import AdapterSeries, ModelId, TrainingPrompt
from shared.argtypes import CommandParser, contract_text, path_argument, positive_int
from shared.config import load_settings
from shared.errors import BadInput, ObjectMissing
from shared.generation.adapters import AdapterRegistry, RegistrationTakenOver, WeightsRefused, read_weights
from shared.generation.diffusion import DiffusionSettings


def main(argv: list[str]) -> int:
    """``skuforge adapters list|register|remove``: the registry at SKUFORGE_DIFFUSION_ADAPTERS_URI."""
    parser = CommandParser(prog="skuforge adapters", description="List, register or remove LoRA adapters.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser(
        "list",
        help="print every registered adapter as one JSON line (none: a note on stderr, exit 0)",
    )
    register = sub.add_parser("register", help="upload a diffusers LoRA .safetensors file and its metadata")
    register.add_argument("adapter_id", help="letters, digits, '_' and '-' (at most 64)")
    register.add_argument(
        "weights", type=path_argument("file"), help="the .safetensors file (diffusers save_lora_weights)"
    )
    register.add_argument("--kind", choices=["general", "specialized"], required=True)
    register.add_argument(
        "--series",
        type=contract_text(AdapterSeries),
        default=None,
        help="the product series (specialized adapters): no control or bidirectional control characters",
    )
    register.add_argument(
        "--base-model",
        type=contract_text(ModelId),
        required=True,
        help="name of the model the adapter was trained on, on one line",
    )
    register.add_argument(
        "--rank",
        type=positive_int,
        default=None,
        help="LoRA rank, at least 1 (default: read from the weights)",
    )
    register.add_argument(
        "--prompt",
        type=contract_text(TrainingPrompt),
        action="append",
        default=[],
        help="a training prompt, on one line (repeat for several)",
    )
    remove = sub.add_parser(
        "remove",
        help="take an adapter out (metadata, then its weights): requests fall back to the next choice "
        "(the series' next newest, the general adapter, none) once a generator lists again, within "
        "SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S. The lora-trainer does not train the same training set "
        "again, nor register it again on a roll-back; a series whose photos change gets a new adapter",
    )
    remove.add_argument("adapter_id", help="the id `skuforge adapters list` prints")
    args = parser.parse_args(argv)
    shared = load_settings()
    diffusion = load_settings(DiffusionSettings)
    uri = diffusion.adapters_uri(shared)
    registry = AdapterRegistry(diffusion.adapters_store(shared))
    if args.action == "list":
        adapters = registry.list()
        for adapter in adapters:
            print(adapter.model_dump_json())
        if not adapters:
            # A registry nothing was registered in yet is normal (exit 0), but a silent empty answer
            # looks the same as a mistyped SKUFORGE_DIFFUSION_ADAPTERS_URI: name where it looked.
            print(f"skuforge adapters list: no adapters registered in {uri}", file=sys.stderr)
        return 0
    if args.action == "remove":
        return _remove(registry, args.adapter_id, uri)
    try:
        if not args.weights.is_file():  # a folder, or a FIFO that read_bytes would wait on for ever
            parser.error(f"{args.weights} is not a file")
        weights = read_weights(args.weights)
    except OSError as exc:  # not this user's to read (or in a folder not theirs), gone since the check
        print(
            f"skuforge adapters register: cannot read {args.weights}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    except ValueError as exc:  # a header safetensors would not read: refused before the rest was read
        print(
            f"skuforge adapters register: {args.weights}: cannot register adapter {args.adapter_id!r}: {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        metadata = registry.register(
            args.adapter_id,
            weights,
            kind=args.kind,
            base_model=args.base_model,
            series=args.series,
            rank=args.rank,
            training_prompts=args.prompt,
        )
    except WeightsRefused as exc:  # its words name the adapter; the file is named here
        print(f"skuforge adapters register: {args.weights}: {exc}", file=sys.stderr)
        return 2
    except RegistrationTakenOver as exc:  # a TransientError, but no store away: another registration
        print(f"skuforge adapters register: {exc}", file=sys.stderr)
        return 1
    except (ValueError, BadInput) as exc:
        print(f"skuforge adapters register: {exc}", file=sys.stderr)
        return 2
    print(metadata.model_dump_json())
    return 0


def _remove(registry: AdapterRegistry, adapter_id: str, uri: str) -> int:
    """``skuforge adapters remove ID``: the removed metadata as one JSON line; exit 2 when none is."""
    try:
        removed = registry.remove(adapter_id)
    except ObjectMissing:
        ids = [adapter.adapter_id for adapter in registry.list()]
        print(
            f"skuforge adapters remove: no adapter {adapter_id!r} in {uri} "
            f"(registered: {', '.join(ids) or 'none'})",
            file=sys.stderr,
        )
        return 2
    except BadInput as exc:  # not an adapter id
        print(f"skuforge adapters remove: {exc}", file=sys.stderr)
        return 2
    except RegistrationTakenOver as exc:
        print(f"skuforge adapters remove: {exc}", file=sys.stderr)
        return 1
    if removed is None:
        print(json.dumps({"adapter_id": adapter_id, "removed": True, "metadata": "unreadable"}))
    else:
        print(
            json.dumps(
                {"adapter_id": adapter_id, "removed": True, "metadata": removed.model_dump(mode="json")}
            )
        )
    return 0
