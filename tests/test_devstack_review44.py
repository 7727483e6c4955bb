"""Review 44 of the local stack's demo: what the flow tracker makes of records it cannot read."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest

from bench.events import produce, sku_ingested_payloads
from devstack.demo.demo import handler_ms
from devstack.demo.report import iou_histogram_svg
from devstack.demo.tracker import WATCHED, FlowTracker
from schemas.topics import SKU_INGESTED
from shared.bus import make_producer
from shared.store import FileStore
from tests.support.bus import create_topics, file_store_uri, isolated_settings
from tests.support.polling import wait_for


def test_the_demo_tracker_skips_a_record_it_cannot_read(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A record of a followed SKU that is not a valid event (a stage dead-letters it, naming why) or a
    dead-letter topic holding something else stopped `skuforge demo` with a pydantic traceback, and
    no report; the tracker now passes over both and follows the rest of the flow."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, *WATCHED, partitions=1)
    since_ms = int(time.time() * 1000) - 2_000
    [ingested] = sku_ingested_payloads(FileStore(tmp_path), 1)
    sku_id = ingested.sku.sku_id
    unreadable = f'{{"sku_id": "{sku_id}", "payload": "not an event"}}'.encode()
    produce(settings, SKU_INGESTED, [ingested], raw=[unreadable])
    producer = make_producer(settings, client_id="skuforge-tests")
    try:
        producer.send(settings.dlq_name(SKU_INGESTED), key=sku_id.encode(), value=b"not a dead letter")
        producer.flush(timeout=settings.flush_timeout_s)
    finally:
        producer.close()

    tracker = FlowTracker(settings, [sku_id], since_ms)
    try:

        def settled() -> bool:
            state = tracker.poll()
            return bool(state.count(SKU_INGESTED)) and len(state.unreadable) >= 2

        wait_for("the valid event and both unreadable records", settled)
    finally:
        tracker.close()
    state = tracker.state
    assert state.count(SKU_INGESTED) == 1
    assert state.dead == []
    # Each named by its topic, so a reader knows which stage's input (or dead letters) to look at.
    topics = sorted(line.split(" ")[0] for line in state.unreadable)
    assert topics == sorted([settings.topic_name(SKU_INGESTED), settings.dlq_name(SKU_INGESTED)])


def test_the_demo_tracker_reads_a_topic_created_after_it_began(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The tracker took the topics' partitions once, when it started: a flow or dead-letter topic
    created (or grown) after that was never read, and the demo waited out its timeout for events
    that were there. It now looks for new partitions each time it polls, read from their beginning."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    since_ms = int(time.time() * 1000) - 2_000
    [ingested] = sku_ingested_payloads(FileStore(tmp_path), 1)
    create_topics(settings, *(topic for topic in WATCHED if topic is not SKU_INGESTED), partitions=1)
    tracker = FlowTracker(settings, [ingested.sku.sku_id], since_ms)
    try:
        tracker.poll(max_s=0.5)
        create_topics(settings, SKU_INGESTED, partitions=1)
        produce(settings, SKU_INGESTED, [ingested])

        wait_for(
            "the event on the topic created after the tracker",
            lambda: tracker.poll().count(SKU_INGESTED),
            timeout_s=30,
        )
    finally:
        tracker.close()


def test_the_iou_histogram_shows_a_gate_below_one_half() -> None:
    """SKUFORGE_GATE_IOU_MIN takes any value in [0, 1]. Below 0.5 the report's histogram, drawn over
    [0.5, 1], put the gate's line and label left of the chart (x < 0, not shown) and counted an IoU of
    0.37 in a bar titled 0.500-0.525. The chart now starts at the gate's tenth below 0.5."""
    width, pad = 520, 28  # the chart's, iou_histogram_svg
    svg = iou_histogram_svg([0.37, 0.97], threshold=0.3, bins=14)
    line_x = float(svg.split('<line x1="')[1].split('"')[0])
    assert pad <= line_x <= width - pad, f"the gate's line at x={line_x} is off the chart"
    assert "gate 0.30" in svg
    titles = [part.split("</title>")[0] for part in svg.split("<title>")[1:]]
    spans = [title.rsplit(": ", 1)[0] for title in titles if not title.endswith(": 0")]  # bars with items
    assert [tuple(float(end) for end in span.split("-")) for span in spans] == [(0.35, 0.4), (0.95, 1.0)]


def _bars_with_items(svg: str) -> list[tuple[float, float]]:
    """(left, right) of each bar of ``iou_histogram_svg`` with an item in it, from the bars' titles."""
    titles = [part.split("</title>")[0] for part in svg.split("<title>")[1:]]
    spans = [title.rsplit(": ", 1)[0] for title in titles if not title.endswith(": 0")]
    return [(float(span.split("-")[0]), float(span.split("-")[1])) for span in spans]


@pytest.mark.parametrize(
    ("iou", "threshold", "bins", "bar"),
    [(0.95, 0.3, 14, (0.95, 1.0)), (0.58, 0.3, 20, (0.58, 0.615)), (0.6, 0.5, 20, (0.6, 0.625))],
)
def test_an_iou_on_a_bar_edge_is_counted_in_the_bar_it_starts(
    iou: float, threshold: float, bins: int, bar: tuple[float, float]
) -> None:
    """The bar was chosen in floats: (0.95 - 0.3) / 0.7 * 14 is 12.999..., and an IoU of 0.95 was
    counted in the bar titled 0.900-0.950, below the one it starts (red where the gate passes it)."""
    svg = iou_histogram_svg([iou], threshold=threshold, bins=bins)

    assert _bars_with_items(svg) == [bar]


def test_the_bar_the_gate_starts_is_coloured_as_passing() -> None:
    """A bar whose left edge is the gate's threshold holds IoUs the gate passes: green, not red."""
    svg = iou_histogram_svg([0.35], threshold=0.335, bins=20)

    rect = svg.split("<title>0.335-0.370")[0].rsplit("<rect", 1)[1]
    assert 'fill="#2a9d4b"' in rect


class _NotMetrics(http.server.BaseHTTPRequestHandler):
    """Another server on a stage's metrics port: a page, not Prometheus text."""

    def do_GET(self) -> None:
        body = b"<html><body>not metrics</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_metrics_port_that_answers_with_no_metrics_leaves_the_handler_time_out() -> None:
    """The demo reads each stage's mean handler time from its /metrics after the run, for the stage
    table. A port that answered with something else (a stage gone and its port taken, a proxy's page)
    raised prometheus_client's ValueError there: the demo ended in a traceback, and wrote no report
    of the run it had waited for. The handler time is then unknown ("-"), as for a port that is down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert handler_ms(f"http://127.0.0.1:{server.server_address[1]}/metrics", "gate") is None
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
