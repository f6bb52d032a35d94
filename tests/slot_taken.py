"""``app:app`` with its worker's inference slot taken from the start, reserving nothing, as by an image that runs
for ever: every image request waits in the queue (then 503). For a real gunicorn in tests/test_memory_budget.py
(``tests.slot_taken:app``), which measures what the queued requests hold."""
from __future__ import annotations

import app as served

app = served.create_app()
# Kept: a hold that nothing refers to is collected, and gives the slot back.
HOLD = app.extensions["super_resolution"].slot.hold()
HOLD.__enter__()
