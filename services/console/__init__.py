"""Correction console: people fix or reject the items the gate flagged.

Consumes: ``correction.pending`` (``intake.py``, a stage on the shared runtime) into a SQLite task
table (``tasks.py``, WAL mode; a redelivered event is ignored by its event id).
Produces: ``correction.resolved`` (``relay.py``), one per decision, published from the table's
outbox with a deterministic event id; an edited mask is stored first as
``masks/corrected/<sku_id>/<item_id>-<sha16>.png`` (the PNG's sha256 prefix) and referenced by
the event.
Serves: ``app.py`` (FastAPI) with three routers: ``pages.py`` (the queue, the item page: overlays,
brush/eraser editing, keyboard shortcuts), ``api.py`` (JSON) and ``auth.py`` (login, CSRF tokens;
primitives in ``security.py``); the decision rules are in ``decisions.py``, the audit trail in
``tasks.py``.
Bad input: intake's undecodable events go to the DLQ (runtime); bad requests get a 4xx with the reason.
Run: ``skuforge serve console`` (``server.py``); Label Studio hand-off: ``skuforge console ...``
(``labelstudio.py``). Settings: ``SKUFORGE_CONSOLE_*`` (``config.py``). See docs/console.md.
"""
