"""Capture: on the application's threads, inside the SDK.

The sampler keeps report traces recorded whatever the export ratio; the processor buffers each
report trace and, when its root ends, folds it (a pure function) into one ``LineageRecord`` and
hands it to delivery; the listener stamps trace ids on report rows. Nothing here does I/O.
Depends on ``delivery`` (the hand-off), never the other way round.
"""
