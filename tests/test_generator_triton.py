"""The generation model on a real Triton server (PyTriton, CPU), called through tritonclient.

No mocks: ``skuforge serve generator`` runs in its own process, as in production.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.tiny_diffusion import product_photo
from devstack.broker import free_port
from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.protocol import MAX_TEXT_BYTES, VariantRequest, VariantResult
from shared.errors import BadInput, TransientError
from shared.generation.backend import GenerationRequest, RowOutcome
from shared.generation.composite import CompositeBackend
from tests.support.generation import TRITON_SIZE_PX as SIZE_PX
from tests.support.generation import triton_variant as variant
from tests.support.signals import as_from_a_shell, stopped
from tests.support.triton import (
    PoisonedComposite,
    TritonServerProcess,
    max_batch_executed,
    poisoned_triton,
    tiny_diffusion_env,
)

pytestmark = pytest.mark.slow


def test_serves_the_same_pixels_as_the_backend_itself(triton: TritonServerProcess) -> None:
    client = TritonGenerator(triton.grpc_url, concurrency=2)
    try:
        first, again = client.generate("composite", [variant(11), variant(11)])
    finally:
        client.close()
    assert isinstance(first, VariantResult) and isinstance(again, VariantResult)
    assert first.image.shape == (SIZE_PX, SIZE_PX, 3) and first.image.dtype == np.uint8
    assert first.expected_mask.shape == (SIZE_PX, SIZE_PX) and set(np.unique(first.expected_mask)) == {0, 255}
    assert np.array_equal(first.image, again.image)
    assert first.model_id == "composite-v1" and first.adapter_id is None
    request = variant(11)
    local = CompositeBackend().generate(
        GenerationRequest(
            reference=request.reference,
            mask=request.mask,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=11,
            n=1,
            parameters={},
            size=SIZE_PX,
        )
    )[0]
    assert np.array_equal(first.image, local.image)
    assert np.array_equal(first.expected_mask, local.expected_mask)
    assert json.loads(first.parameters_json) == local.parameters


def test_http_protocol_answers_too(triton: TritonServerProcess) -> None:
    client = TritonGenerator(triton.http_url, protocol="http", concurrency=1)
    try:
        (result,) = client.generate("composite", [variant(5, parameters={"scene": "shelf", "occluders": 1})])
    finally:
        client.close()
    assert isinstance(result, VariantResult)
    used = json.loads(result.parameters_json)
    assert used["scene"] == "shelf" and used["occluders"] == 1


def test_a_refused_variant_fails_alone(triton: TritonServerProcess) -> None:
    empty = np.zeros((SIZE_PX, SIZE_PX), dtype=np.uint8)
    client = TritonGenerator(triton.grpc_url, concurrency=4)
    try:
        results = client.generate(
            "composite",
            [variant(1), variant(2, mask=empty), variant(3, parameters={"sparkle": 1}), variant(4)],
        )
    finally:
        client.close()
    assert isinstance(results[0], VariantResult) and isinstance(results[3], VariantResult)
    assert isinstance(results[1], BadInput) and results[1].reason == "generation_refused"
    assert "mask is empty" in str(results[1])
    assert isinstance(results[2], BadInput) and "unknown composite parameter(s) sparkle" in str(results[2])


def test_a_request_for_a_size_no_model_paints_is_refused_alone(triton: TritonServerProcess) -> None:
    # Before, size -1 (another client's bug) raised inside the model: Triton failed the whole batch, so
    # the variants batched with it came back "unavailable", and the request itself was retried forever.
    client = TritonGenerator(triton.grpc_url, concurrency=2)
    # Size 0 too: its 0 x 0 images were an empty tensor, which PyTriton failed the whole batch on.
    unusable = [VariantRequest(**{**variant(8).__dict__, "size": size}) for size in (-1, 0)]
    try:
        served, *refused = client.generate("composite", [variant(7), *unusable])
    finally:
        client.close()
    assert isinstance(served, VariantResult) and served.image.shape == (SIZE_PX, SIZE_PX, 3)
    for size, refusal in zip((-1, 0), refused, strict=True):
        assert isinstance(refusal, BadInput) and refusal.reason == "generation_refused"
        assert f"size must be from 1 to 2048 px, got {size}" in str(refusal)


def test_a_variant_with_an_empty_reference_or_mask_is_refused_alone(triton: TritonServerProcess) -> None:
    # Before, PyTriton failed on the empty tensor before the model saw it: Triton answered INTERNAL,
    # the client read it as Triton unavailable, and the stage retried the variant for ever.
    nothing = {"reference": np.zeros((0, 0, 3), np.uint8), "mask": np.zeros((0, 0), np.uint8)}
    empty_reference = VariantRequest(**{**variant(8).__dict__, **nothing})
    empty_mask = VariantRequest(**{**variant(9).__dict__, "mask": np.zeros((SIZE_PX, 0), np.uint8)})
    small_mask = variant(10, mask=np.full((32, 32), 255, np.uint8))
    client = TritonGenerator(triton.grpc_url, concurrency=4)
    try:
        served, *refused = client.generate("composite", [variant(7), empty_reference, empty_mask, small_mask])
    finally:
        client.close()
    assert isinstance(served, VariantResult)
    assert all(isinstance(each, BadInput) and each.reason == "generation_refused" for each in refused)
    assert [str(refusal).split(": ", 1)[1] for refusal in refused] == [
        "skuforge_generator_composite cannot be sent variant seed 8: reference is 0x0x3, mask is 0x0, "
        "an empty image",
        "skuforge_generator_composite cannot be sent variant seed 9: mask is 256x0, an empty image",
        "skuforge_generator_composite refused variant seed 10: CompositeError: mask is (32, 32), "
        "the reference is (256, 256): they must match",
    ]


def raw_request(text_inputs: dict[str, bytes] | None = None, **tensors: np.ndarray | None) -> list[object]:
    """One row as a third-party tritonclient would send it (ours sends only UTF-8 text and images with
    pixels): ``text_inputs`` and ``tensors`` replace inputs, a tensor of None leaves its input out."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    request = variant(12)
    values: dict[str, np.ndarray | None] = {
        "reference": request.reference[None],
        "mask": request.mask[None],
        "seed": np.array([[12]], dtype=np.int64),
        "size": np.array([[SIZE_PX]], dtype=np.int32),
    }
    texts = {"prompt": b"a can", "negative_prompt": b"", "parameters": b"{}", "adapter_id": b""}
    texts |= {"series": b"", "own_names": b"[]", **(text_inputs or {})}
    values |= {name: np.array([[text]], dtype=object) for name, text in texts.items()}
    values |= tensors
    inputs = []
    for name, value in values.items():
        if value is not None:
            tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(
    "name", ["prompt", "negative_prompt", "parameters", "adapter_id", "series", "own_names"]
)
def test_text_that_is_not_utf8_is_refused_naming_its_input(triton: TritonServerProcess, name: str) -> None:
    # Before, the row's error was a bare "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff...":
    # the client that sent it could not tell which of its six text inputs to fix.
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    answer = client.infer("skuforge_generator_composite", raw_request({name: b"caf\xe9 \xff"}))
    (error,) = answer.as_numpy("error").reshape(-1)
    assert error.decode() == f"ValueError: {name} is not UTF-8 text: invalid continuation byte at byte 3"
    assert not answer.as_numpy("image").any()


@pytest.mark.parametrize("name", ["prompt", "negative_prompt", "own_names"])
def test_text_over_the_byte_limit_is_refused_naming_its_input(triton: TritonServerProcess, name: str) -> None:
    # Before, any text gRPC carries was accepted: a megabyte prompt from another client tied the diffusion
    # tokenizer up for seconds a row (CLIP reads 77 tokens of it). A text at the limit is still served.
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    at_limit = b'["' + b"a" * (MAX_TEXT_BYTES - 4) + b'"]' if name == "own_names" else b"a" * MAX_TEXT_BYTES
    served = client.infer("skuforge_generator_composite", raw_request({name: at_limit}))
    assert served.as_numpy("error").reshape(-1)[0] == b""
    over = client.infer("skuforge_generator_composite", raw_request({name: b"a" * 1_000_000}))
    (error,) = over.as_numpy("error").reshape(-1)
    assert error.decode() == f"ValueError: {name} is 1000000 bytes, more than {MAX_TEXT_BYTES}: shorten it"
    assert not over.as_numpy("image").any()


@pytest.mark.parametrize(
    ("tensors", "named"),
    [
        ({"reference": np.zeros((2, 8, 8, 3), np.uint8)}, "input 'reference' batch size does not match"),
        ({"prompt": np.array([[b"a"], [b"b"]], dtype=object)}, "input 'prompt' batch size does not match"),
        ({"reference": np.zeros((1, 8, 8, 3), np.float32)}, "input 'reference' data-type is 'FP32'"),
        ({"seed": np.array([[np.nan]])}, "input 'seed' data-type is 'FP64'"),
        ({"mask": np.zeros((1, 8, 8, 1), np.uint8)}, "unexpected shape for input 'mask'"),
        ({"reference": np.zeros((1, 8, 8, 4), np.uint8)}, "unexpected shape for input 'reference'"),
        ({"series": None, "own_names": None}, "missing required input(s) ['series']"),
    ],
)
def test_a_malformed_tensor_is_an_invalid_argument_naming_it(
    triton: TritonServerProcess, tensors: dict[str, np.ndarray | None], named: str
) -> None:
    # Triton checks these against the inputs the model declares before the model sees them: a client
    # error (gRPC INVALID_ARGUMENT, HTTP 400) that a client does not retry, never INTERNAL.
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("skuforge_generator_composite", raw_request(None, **tensors))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert named in (refused.value.message() or ""), refused.value.message()


@pytest.mark.parametrize("name", ["reference", "series", "size"])
def test_a_required_input_left_out_beside_an_optional_one_is_refused_naming_it(
    triton: TritonServerProcess, name: str
) -> None:
    # Triton counts a request's inputs, not their names: own_names in place of a required input passed,
    # and the model's KeyError was answered INTERNAL, which a client retries for ever.
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    answer = client.infer("skuforge_generator_composite", raw_request(**{name: None}))
    (error,) = answer.as_numpy("error").reshape(-1)
    assert error.decode() == f"ValueError: the request has no {name} input: send every input of the model"


@pytest.mark.xfail(
    strict=True,
    reason="PyTriton 0.7.0 cannot pass an empty tensor to the model (its TensorStore: 'memoryview: cannot "
    "cast view with zeros in shape'), and it answers every exception INTERNAL; TritonGenerator refuses "
    "such a variant before sending it. Passing, this test says PyTriton was fixed.",
)
def test_an_empty_reference_from_another_client_is_a_client_error(triton: TritonServerProcess) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        answer = client.infer(
            "skuforge_generator_composite", raw_request(mask=np.zeros((1, SIZE_PX, 0), np.uint8))
        )
    except InferenceServerException as exc:
        assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc.message()
    else:
        assert answer.as_numpy("error").reshape(-1)[0], "an empty mask was painted"


def test_a_reference_over_the_pixel_limit_is_refused_before_the_backend_paints_it(tmp_path: Path) -> None:
    # Before, the server painted any reference gRPC could carry: a 12000 x 12000 one (another client's,
    # our stage shrinks them) took 12 s and 2.4 GB for one row, and a batch of them took the server down.
    server = TritonServerProcess(tmp_path, extra_env={"SKUFORGE_MAX_IMAGE_PIXELS": str(SIZE_PX * SIZE_PX)})
    server.start()
    big = VariantRequest(
        **{
            **variant(8).__dict__,
            "reference": np.full((SIZE_PX, SIZE_PX + 1, 3), 90, np.uint8),
            "mask": np.full((SIZE_PX, SIZE_PX + 1), 255, np.uint8),
        }
    )
    client = TritonGenerator(server.grpc_url, concurrency=2)
    try:
        served, refused = client.generate("composite", [variant(7), big])
    finally:
        client.close()
        server.stop()
    assert isinstance(served, VariantResult)
    assert isinstance(refused, BadInput) and refused.reason == "generation_refused"
    assert str(refused).endswith(
        "refused variant seed 8: ValueError: reference is 257x256 px, more than "
        "SKUFORGE_MAX_IMAGE_PIXELS (65536): shrink it first"
    ), str(refused)


def test_concurrent_requests_are_batched(triton: TritonServerProcess) -> None:
    before = max_batch_executed(triton.statistics())
    client = TritonGenerator(triton.grpc_url, concurrency=8)
    try:
        results = client.generate("composite", [variant(100 + i) for i in range(16)])
    finally:
        client.close()
    assert all(isinstance(result, VariantResult) for result in results)
    assert len({result.image.tobytes() for result in results if isinstance(result, VariantResult)}) == 16
    stats = triton.statistics()
    assert max_batch_executed(stats) > 1, stats
    assert max(before, max_batch_executed(stats)) <= 8  # never above the configured max batch size


def test_overload_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    # One row per batch, one waiting request at most: a burst of slow 512 px requests must overflow.
    server = TritonServerProcess(tmp_path, max_batch_size=1, batch_delay_us=0, max_queue_size=1).start()
    refusals: list[GeneratorUnavailable] = []
    served: list[VariantResult | BadInput] = []
    lock = threading.Lock()

    def call(seed: int) -> None:
        client = TritonGenerator(server.grpc_url, concurrency=1)
        request = variant(seed)
        big = VariantRequest(**{**request.__dict__, "size": 512})
        try:
            result = client.generate("composite", [big])
            with lock:
                served.extend(result)
        except GeneratorUnavailable as exc:
            with lock:
                refusals.append(exc)
        finally:
            client.close()

    try:
        threads = [threading.Thread(target=call, args=(seed,)) for seed in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()
    assert served, "nothing was served"
    assert refusals, "a burst of 16 requests against a queue of 1 was never refused"
    message = str(refusals[0])
    assert "overloaded" in message and "Exceeds maximum queue size" in message, message
    assert {refusal.kind for refusal in refusals} == {"overloaded"}  # what the metrics count it as


def test_triton_down_is_a_transient_error() -> None:
    client = TritonGenerator(f"127.0.0.1:{free_port()}", timeout_s=5.0, concurrency=1)
    try:
        with pytest.raises(GeneratorUnavailable, match="unavailable") as raised:
            client.generate("composite", [variant(1)])
        assert raised.value.kind == "unavailable"
    finally:
        client.close()
    assert client.last_call_ok is False


def test_a_model_that_raises_is_retried_and_counted_apart_from_triton_being_away(
    triton: TritonServerProcess,
) -> None:
    # PyTriton answers INTERNAL for whatever the model raises (here an empty tensor it cannot pass on,
    # which TritonGenerator never sends; an older generator server raised on some inputs). It was
    # counted "unavailable", as if Triton were down, so an alert could not tell the two apart.
    from services.generator.client import _explain

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("skuforge_generator_composite", raw_request(mask=np.zeros((1, SIZE_PX, 0), np.uint8)))
    status = str(raised.value.status())
    message, kind = _explain(status, raised.value.message() or "", triton.grpc_url, "composite")
    assert kind == "internal", (status, message)
    assert "skuforge_generator_composite raised" in message and "upgrade it" in message, message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_model_triton_does_not_serve_is_told_apart_from_triton_being_away(
    triton: TritonServerProcess, protocol: str
) -> None:
    # This Triton serves composite only (``serve generator --backend composite``); the stage asks for
    # diffusion. Triton answers NOT_FOUND (HTTP 404), which was counted "unavailable" and read as Triton
    # being down, while Triton was up and the fault was which models it serves.
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    client = TritonGenerator(url, protocol=protocol, timeout_s=30.0, concurrency=1)
    try:
        with pytest.raises(GeneratorUnavailable) as raised:
            client.generate("diffusion", [variant(1)])
    finally:
        client.close()
    assert raised.value.kind == "model_missing"
    message = str(raised.value)
    assert f"Triton at {url} does not serve skuforge_generator_diffusion" in message, message
    assert "not loaded on that server" in message and "SKUFORGE_GENERATION_BACKEND_MIX" in message, message
    assert isinstance(raised.value, TransientError)  # backed off and retried, never dead-lettered
    assert client.last_call_ok is False  # the stage's readiness


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [descendant for child in map(int, children) for descendant in (child, *_descendants(child))]


def test_a_hang_up_stops_triton_as_sigterm_does(tmp_path: Path) -> None:
    # SIGHUP (the terminal of `skuforge serve generator` closed) kept its default: the process died
    # where it stood (exit -1), leaving the Triton server it had started without its stop.
    server = TritonServerProcess(tmp_path).start(preexec_fn=as_from_a_shell)  # SIGHUP not ignored
    assert server.process is not None
    started = _descendants(server.process.pid)  # Triton and its model backends
    try:
        server.process.send_signal(signal.SIGHUP)
        assert server.process.wait(timeout=120) == 0, server.log_tail()
        # PyTriton's stop waits for Triton to end: its ports are closed by then.
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(server.grpc_url).is_server_live()
    finally:
        server.stop()
        for pid in started:  # what a process killed where it stood left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


ROOT = Path(__file__).resolve().parent.parent

# `skuforge serve generator`, held in its start-up once it says so: in the copy of its diffusion model
# into the model cache (gigabytes from S3 at each start of a pod without a persistent cache) after the
# first file, or in PyTriton's wait for the Triton server it started.
HELD_IN_THE_START = """
import sys, time
from pytriton.triton import TritonBase
from shared import model_cache

def held(say, then):
    def holding(*args):
        done = then(*args)
        print(say, flush=True)
        time.sleep(60)
        return done
    return holding

model_cache._write_durably = held("downloading", model_cache._write_durably)
TritonBase._wait_for_server = held("starting", TritonBase._wait_for_server)
from skuforge_cli.main import main
sys.exit(main(["serve", "generator", *sys.argv[1:]]))
"""


def test_a_stop_while_the_model_downloads_removes_its_partial_copy_and_exits_0(tmp_path: Path) -> None:
    # SIGTERM (a pod deleted while it starts, `skuforge up` stopping) had its default until the models
    # were bound: the process died where it stood, the half-copied model left in the cache (kept 30 days
    # by SKUFORGE_MODEL_CACHE_UNUSED_DAYS) beside PyTriton's workspace.
    env = tiny_diffusion_env(tmp_path)
    cache, pytriton_home = tmp_path / "cache", tmp_path / "pytriton"
    env["SKUFORGE_DIFFUSION_MODEL"] = Path(env["SKUFORGE_DIFFUSION_MODEL"]).as_uri()
    server = TritonServerProcess(tmp_path, backends=("diffusion",), extra_env=env)
    ended = stopped(
        [sys.executable, "-c", HELD_IN_THE_START, "--backend", "diffusion"],
        [("downloading", signal.SIGTERM)],
        lost="serve generator did not stop within 60 s of its stop",
        env={**server.env, "PYTRITON_HOME": str(pytriton_home), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        within_s=60,
    )
    assert not [entry.name for entry in cache.iterdir() if entry.name.startswith(".partial-")]
    assert not list(pytriton_home.iterdir())
    assert ended.returncode == 0, ended.err


def test_a_hang_up_while_triton_starts_stops_it_and_exits_0(tmp_path: Path) -> None:
    # PyTriton's serve() stops Triton on a KeyboardInterrupt only once its models are ready: one while
    # Triton started left serve() and the command, exit 130 "interrupted", for a SIGTERM or SIGHUP.
    pytriton_home = tmp_path / "pytriton"
    server = TritonServerProcess(tmp_path)
    started: list[int] = []

    def starting(run: subprocess.Popen[str]) -> None:
        assert run.stdout is not None
        for line in run.stdout:  # Triton's own log comes there too
            if line == "starting\n":
                started.extend(_descendants(run.pid))  # Triton and its model backends
                return
        pytest.fail(f"serve generator ended before Triton started:\n{run.communicate()}")

    try:
        ended = stopped(
            [sys.executable, "-c", HELD_IN_THE_START],
            [(starting, signal.SIGHUP)],
            lost="serve generator did not stop within 60 s of its hang-up",
            env={**server.env, "PYTRITON_HOME": str(pytriton_home), "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            within_s=60,
        )
        assert ended.returncode == 0, ended.err
        assert started
        assert not [pid for pid in started if _running(pid)], "Triton outlived serve generator"
        assert not list(pytriton_home.iterdir())
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def diffusion_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServerProcess]:
    """Triton serving both backends, diffusion on the tiny pipeline with one adapter for series 's1'."""
    work = tmp_path_factory.mktemp("diffusion-triton")
    server = TritonServerProcess(
        work,
        backends=("composite", "diffusion"),
        extra_env=tiny_diffusion_env(work, adapters={"s1": 1}),
        max_batch_size=4,
        batch_delay_us=50_000,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def small_variant(seed: int, series: str | None) -> VariantRequest:
    reference, mask = product_photo(96, seed=3)
    return VariantRequest(
        reference=np.asarray(reference),
        mask=np.asarray(mask),
        prompt="a photo of sks can",
        negative_prompt="",
        seed=seed,
        parameters_json="{}",
        adapter_id=None,
        series=series,
        size=64,
    )


def test_diffusion_backend_on_triton_keeps_the_product_and_picks_the_adapter(
    diffusion_triton: TritonServerProcess,
) -> None:
    client = TritonGenerator(diffusion_triton.grpc_url, concurrency=4)
    try:
        base, base_again, adapted, other = client.generate(
            "diffusion",
            [small_variant(3, None), small_variant(3, None), small_variant(3, "s1"), small_variant(4, None)],
        )
        (composite,) = client.generate("composite", [small_variant(3, "s1")])
    finally:
        client.close()
    for result in (base, base_again, adapted, other, composite):
        assert isinstance(result, VariantResult), result
    assert isinstance(base, VariantResult) and isinstance(base_again, VariantResult)
    assert isinstance(adapted, VariantResult) and isinstance(other, VariantResult)
    assert isinstance(composite, VariantResult)
    assert base.image.shape == (64, 64, 3) and set(np.unique(base.expected_mask)) == {0, 255}
    assert base.model_id.startswith("diffusion:") and composite.model_id == "composite-v1"
    assert np.array_equal(base.image, base_again.image)  # a seed reproduces its image
    assert not np.array_equal(base.image, other.image)
    assert base.adapter_id is None and adapted.adapter_id == "lora-s1"
    assert composite.adapter_id is None  # compositing has no adapters, whatever the series
    # Outside the product the adapter changes the painting; inside, the product's pixels are kept.
    inside = base.expected_mask > 0
    assert not np.array_equal(base.image[~inside], adapted.image[~inside])
    assert np.abs(base.image[inside].astype(int) - adapted.image[inside].astype(int)).max() <= 8
    stats = diffusion_triton.statistics("diffusion")
    assert max_batch_executed(stats) >= 1


def test_parameters_with_nan_or_infinity_are_refused_not_echoed(
    diffusion_triton: TritonServerProcess,
) -> None:
    # Python's json reads NaN and Infinity, which JSON has not: the diffusion backend ignored the unknown
    # key and echoed it into parameters_used, an answer no strict JSON parser reads. So it did a number
    # no float holds (1e400 reads as inf); since the server sends no such answer, it was a backend error.
    client = TritonGenerator(diffusion_triton.grpc_url, concurrency=2)
    said = {
        "NaN": "NaN is no JSON number",
        "-Infinity": "-Infinity is no JSON number",
        "1e400": "1e400 is too large for a number",
        "-2E+999": "-2E+999 is too large for a number",
    }
    asked = [
        VariantRequest(**{**small_variant(5, None).__dict__, "parameters_json": f'{{"note": {constant}}}'})
        for constant in said
    ]
    try:
        refusals = client.generate("diffusion", asked)
    finally:
        client.close()
    for words, refusal in zip(said.values(), refusals, strict=True):
        assert isinstance(refusal, BadInput) and refusal.reason == "generation_refused", refusal
        assert str(refusal).endswith(f"ValueError: parameters are not JSON: {words}")


def test_concurrent_diffusion_rows_are_painted_in_one_pipeline_call(
    diffusion_triton: TritonServerProcess,
) -> None:
    """Triton merges concurrent requests; the model paints their rows together, as one by one would."""
    variants = [small_variant(40 + i, "s1" if i % 4 == 3 else None) for i in range(8)]
    together = TritonGenerator(diffusion_triton.grpc_url, concurrency=8)
    alone = TritonGenerator(diffusion_triton.grpc_url, concurrency=1)
    try:
        batched = together.generate("diffusion", variants)
        single = alone.generate("diffusion", variants)
    finally:
        together.close()
        alone.close()
    rows = []
    for variant_request, many, one in zip(variants, batched, single, strict=True):
        assert isinstance(many, VariantResult) and isinstance(one, VariantResult)
        assert many.adapter_id == ("lora-s1" if variant_request.series else None)
        assert np.abs(many.image.astype(int) - one.image.astype(int)).max() <= 2  # float rounding only
        assert json.loads(one.parameters_json)["pipeline_batch_rows"] == 1
        rows.append(json.loads(many.parameters_json)["pipeline_batch_rows"])
    assert max(rows) >= 2, rows  # several rows per pipeline call
    assert max(rows) <= 4  # SKUFORGE_DIFFUSION_MAX_BATCH (default 4) bounds a call


def test_a_row_the_backend_fails_on_fails_alone_and_is_not_called_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: the exception failed the whole Triton batch, the client called it "unavailable" and the
    # stage retried it forever, stalling the partition (and failing the rows batched with it).
    from services.generator.client import GeneratorFailed

    with poisoned_triton(monkeypatch) as (url, _):
        client = TritonGenerator(url, concurrency=3)
        good = TritonGenerator(url, concurrency=2)
        try:
            poisoned: list[BaseException] = []
            thread = threading.Thread(
                target=lambda: poisoned.extend(_raised(lambda: client.generate("composite", [variant(13)])))
            )
            thread.start()
            served = good.generate("composite", [variant(11), variant(12)])
            thread.join(timeout=120)
            # A store the backend reads being away is transient: before, it came back as a backend
            # error, and the stage dead-lettered a good SKU after a few quick attempts.
            away = _raised(lambda: good.generate("composite", [variant(17)]))
        finally:
            client.close()
            good.close()
    assert all(isinstance(result, VariantResult) for result in served)
    (error,) = poisoned
    assert isinstance(error, GeneratorFailed) and not isinstance(error, GeneratorUnavailable)
    assert "seed 13" in str(error) and "ZeroDivisionError: a bug on this input" in str(error)
    (unavailable,) = away
    assert isinstance(unavailable, GeneratorUnavailable) and "adapter registry is away" in str(unavailable)


class MisshapenComposite(PoisonedComposite):
    """The composite backend with a bug of its own answer: the rows of a seed of ``misshapen`` get an
    image half the size asked, the others are painted as usual."""

    def __init__(self, misshapen: frozenset[int]) -> None:
        super().__init__(failing=(), away=())
        self.misshapen = misshapen

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        outcomes = super().generate_many(requests)
        for request, outcome in zip(requests, outcomes, strict=True):
            if request.seed in self.misshapen and isinstance(outcome, list):
                (sample,) = outcome
                half = request.size // 2
                outcome[0] = dataclasses.replace(sample, image=sample.image[:half, :half])
        return outcomes


def test_an_answer_of_the_wrong_shape_fails_its_row_alone_and_is_not_called_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: the server's RuntimeError failed the whole Triton batch as INTERNAL, which the client reads
    # as Triton being away: the stage retried it, and the good rows batched with it, for ever.
    from services.generator.client import GeneratorFailed

    with poisoned_triton(monkeypatch, MisshapenComposite(frozenset({19}))) as (url, backend):
        failed, retried = _fail_one_then_retry_the_rest(url, failing_seed=19)
    (error,) = failed
    assert isinstance(error, GeneratorFailed) and not isinstance(error, GeneratorUnavailable)
    assert "seed 19" in str(error) and f"for size {SIZE_PX}" in str(error)
    assert all(isinstance(result, VariantResult) for result in retried)
    assert sorted(backend.painted) == [11, 12, 19]  # the good rows were answered, and kept for the retry


def test_the_answers_beside_a_failed_row_are_kept_for_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's call fails on one row (``GeneratorFailed``) and the stage tries it again. Before, the
    client raised at the first failed request: the answers of the others, still being drawn, were
    thrown away, and the retry drew them again."""
    from services.generator.client import GeneratorFailed

    with poisoned_triton(monkeypatch) as (url, backend):
        failed, retried = _fail_one_then_retry_the_rest(url, failing_seed=13)
    (error,) = failed
    assert isinstance(error, GeneratorFailed) and "seed 13" in str(error)
    assert all(isinstance(result, VariantResult) for result in retried)
    assert sorted(backend.painted) == [11, 12]  # each drawn once: the retry was answered from what was kept


def test_the_answers_kept_are_bounded_and_let_go_when_their_input_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Answers are kept until the stage lets go of them (its input committed): past ``keep_at_most`` the
    oldest go first, never those of the call in hand, whose retry would otherwise draw them again."""
    with poisoned_triton(monkeypatch) as (url, backend):
        client = TritonGenerator(url, concurrency=3, keep_at_most=2)
        try:
            client.generate("composite", [variant(1)])  # an input never committed: kept until the bound
            client.generate("composite", [variant(2), variant(3), variant(4)])  # over the bound: all kept
            client.generate("composite", [variant(2), variant(3), variant(4), variant(1)])
            client.forget("composite", [variant(2)])  # its input committed
            client.generate("composite", [variant(2), variant(3)])
        finally:
            client.close()
    # 1 was let go for the 3 of the second call, 2 once forgotten; 3 and 4 were drawn once.
    assert sorted(backend.painted) == [1, 1, 2, 2, 3, 4]


class _DiffusionAwaitsComposite(PoisonedComposite):
    """Serves both models: a row of seed 99 waits, up to 60 s, for a row of another seed to be painted
    (``in_vain`` says whether it waited that long); ``waiting`` is set once it waits."""

    def __init__(self) -> None:
        super().__init__(failing=(), away=())
        self.waiting, self.other_painted = threading.Event(), threading.Event()
        self.in_vain = False

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        if any(request.seed == 99 for request in requests):
            self.waiting.set()
            self.in_vain = not self.other_painted.wait(timeout=60)
        outcomes = super().generate_many(requests)
        if any(request.seed != 99 for request in requests):
            self.other_painted.set()
        return outcomes


def test_one_models_requests_do_not_wait_behind_anothers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage calls a round's backends together. The client's workers were one pool for every model:
    a composite request sent while diffusion requests held every worker waited for them to end."""
    served = _DiffusionAwaitsComposite()
    with poisoned_triton(monkeypatch, served, models=("composite", "diffusion")) as (url, _):
        client = TritonGenerator(url, concurrency=1)
        diffusion: list[VariantResult | BadInput] = []
        try:
            thread = threading.Thread(
                target=lambda: diffusion.extend(client.generate("diffusion", [variant(99)]))
            )
            thread.start()
            assert served.waiting.wait(timeout=120), "the diffusion request never reached the model"
            composite = client.generate("composite", [variant(1)])
            thread.join(timeout=120)
        finally:
            client.close()
    assert not served.in_vain  # the composite request was served while the diffusion one was
    assert all(isinstance(result, VariantResult) for result in [*composite, *diffusion])
    assert sorted(served.painted) == [1, 99]


def _raised(call: Callable[[], object]) -> list[BaseException]:
    try:
        call()
    except Exception as exc:
        return [exc]
    return []


def _fail_one_then_retry_the_rest(
    url: str, failing_seed: int
) -> tuple[list[BaseException], list[VariantResult | BadInput]]:
    """Seeds 11, ``failing_seed`` and 12 in one call (three requests at once), then 11 and 12 again, as
    the stage retries; returns what the first call raised and what the retry answered. The client is
    closed before it returns, which waits for every request sent, answered or not."""
    client = TritonGenerator(url, concurrency=3)
    try:
        failed = _raised(
            lambda: client.generate("composite", [variant(11), variant(failing_seed), variant(12)])
        )
        retried = client.generate("composite", [variant(11), variant(12)])
    finally:
        client.close()
    return failed, retried


def test_a_backends_own_refusal_reason_reaches_the_dead_letter() -> None:
    """Every refusal was `generation_refused`, which `dlq replay` leaves as permanent: the letters of an
    adapter not registered yet (`unknown_adapter`) were never replayed once it was."""
    from services.generator.client import refusal
    from shared.errors import BadInput as Refused

    unknown = str(Refused("unknown_adapter", "no adapter 'cola-1' in the registry (registered: none)"))
    letter = refusal(f"BadInput: {unknown}", "diffusion refused variant seed 3")
    assert letter.reason == "unknown_adapter"
    assert str(letter) == "unknown_adapter: diffusion refused variant seed 3: no adapter 'cola-1' in the " + (
        "registry (registered: none)"
    )
    for drawn_badly in ("ValueError: the mask is empty", "BadInput: Not A Reason: x", "something else"):
        assert refusal(drawn_badly, "composite refused variant seed 1").reason == "generation_refused"


class WrongAnswerComposite(PoisonedComposite):
    """The composite backend with bugs of its answer on some seeds, each once the row is painted: a row
    of ``numpy_parameters`` reports a numpy number (no JSON holds it), one of ``not_a_list`` is answered
    with a bare sample instead of a list of them, and a batch holding a row of ``one_short`` gets one
    outcome fewer than it has rows."""

    def __init__(self, *, numpy_parameters: int = -1, not_a_list: int = -1, one_short: int = -1) -> None:
        super().__init__(failing=(), away=())
        self.numpy_parameters, self.not_a_list, self.one_short = numpy_parameters, not_a_list, one_short

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        outcomes: list[Any] = super().generate_many(requests)
        for place, (request, outcome) in enumerate(zip(requests, outcomes, strict=True)):
            if request.seed == self.numpy_parameters and isinstance(outcome, list):
                (sample,) = outcome
                outcome[0] = dataclasses.replace(sample, parameters={"scale": np.float32(0.5)})
            if request.seed == self.not_a_list and isinstance(outcome, list):
                outcomes[place] = outcome[0]
        if any(request.seed == self.one_short for request in requests):
            outcomes = outcomes[:-1]
        return outcomes


@pytest.mark.parametrize(
    ("bug", "said"),
    [
        ("numpy_parameters", "not JSON serializable"),
        ("not_a_list", "instead of a list of samples"),
        ("one_short", "0 outcomes for 1 rows"),
    ],
)
def test_a_backend_answer_the_server_cannot_send_fails_its_row_alone_and_is_not_called_transient(
    monkeypatch: pytest.MonkeyPatch, bug: str, said: str
) -> None:
    # Before, the fault was raised from the model: Triton answered the whole batch INTERNAL, which the
    # client reads as Triton being away, and the stage retried the variant (and its batch) for ever.
    from services.generator.client import GeneratorFailed

    with poisoned_triton(monkeypatch, WrongAnswerComposite(**{bug: 19})) as (url, _):
        failed, retried = _fail_one_then_retry_the_rest(url, failing_seed=19)
    (error,) = failed
    assert isinstance(error, GeneratorFailed) and not isinstance(error, GeneratorUnavailable), error
    assert "seed 19" in str(error) and said in str(error)
    assert all(isinstance(result, VariantResult) for result in retried)


class RegistryComposite(PoisonedComposite):
    """The composite backend behind an adapter registry that a test changes: a row asking for adapter
    ``cola-1`` is refused ``unknown_adapter`` until ``registered`` is set, and its registry is away (a
    ``TransientError``) while ``away`` is. Fails on seed 13 as ``PoisonedComposite`` does."""

    def __init__(self) -> None:
        super().__init__(failing=(13,), away=())
        self.registered = self.away_now = False

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        if self.away_now and any(request.adapter_id == "cola-1" for request in requests):
            raise TransientError("S3 unreachable: the adapter registry is away")
        asked = [dataclasses.replace(request, adapter_id=None) for request in requests]
        outcomes = super().generate_many(asked)
        return [
            BadInput("unknown_adapter", "no adapter 'cola-1' in the registry (registered: none)")
            if request.adapter_id == "cola-1" and not self.registered
            else outcome
            for request, outcome in zip(requests, outcomes, strict=True)
        ]


def test_a_refusal_the_registry_may_lift_is_asked_again_on_the_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers of a failed call are kept for its retry; an `unknown_adapter` refusal among them was
    too, and the retry, once the adapter was registered, dead-lettered the SKU as `unknown_adapter` all
    the same. Asked again, it is served; while it cannot be asked again, the refusal kept stands."""
    from services.generator.client import GeneratorFailed

    with_adapter = dataclasses.replace(variant(21), adapter_id="cola-1")
    served = RegistryComposite()
    with poisoned_triton(monkeypatch, served) as (url, _):
        client = TritonGenerator(url, concurrency=3)
        try:
            failed = _raised(lambda: client.generate("composite", [with_adapter, variant(13)]))
            served.away_now = True
            (still_refused,) = client.generate("composite", [with_adapter])
            reached_when_away = client.last_call_ok  # readiness: the model was not reached
            served.away_now, served.registered = False, True
            (retried,) = client.generate("composite", [with_adapter])
        finally:
            client.close()
    (error,) = failed
    assert isinstance(error, GeneratorFailed) and "seed 13" in str(error)
    assert isinstance(still_refused, BadInput) and still_refused.reason == "unknown_adapter"
    assert not reached_when_away
    assert isinstance(retried, VariantResult), retried
    assert client.last_call_ok


def test_readiness_stays_false_while_one_models_calls_fail_though_anothers_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stage calls a mix's models together, and readiness was whichever call ended last: a model that
    could not serve (not loaded, its store away) for good, beside one that served, read as ready."""
    with poisoned_triton(monkeypatch, models=("composite", "diffusion")) as (url, _):
        client = TritonGenerator(url, concurrency=2)
        try:
            with pytest.raises(GeneratorUnavailable):
                client.generate("diffusion", [variant(17)])  # its store away: not served
            client.generate("composite", [variant(1)])
            while_diffusion_fails = client.last_call_ok
            (served,) = client.generate("diffusion", [variant(2)])
        finally:
            client.close()
    assert not while_diffusion_fails
    assert isinstance(served, VariantResult)
    assert client.last_call_ok  # every model's last call reached it


def test_calls_from_a_new_thread_each_leave_no_connection_open(triton: TritonServerProcess) -> None:
    # The stage calls generate from a new thread each round (its backends' calls go together). The model
    # metadata was asked on the caller's thread, with a client made for it: over HTTP each such thread
    # left 4 descriptors open (gevent's hub and a connection), and under a limit of 1024 the stage
    # aborted after some 250 rounds ("(libev) error creating signal/async pipe: Too many open files").
    client = TritonGenerator(triton.http_url, protocol="http")

    def one_round() -> None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate") as pool:
            pool.submit(client.generate, "composite", [variant(3)]).result()

    try:
        one_round()  # the workers' own clients made once
        gc.collect()
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(150):
            one_round()
        gc.collect()
        after = len(os.listdir("/proc/self/fd"))
    finally:
        client.close()
    assert after - before < 20, f"{after - before} descriptors more after 150 rounds"
