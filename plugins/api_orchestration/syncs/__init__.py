"""Recurring API syncs: streams and windows, the resumable page loop, checkpoints, progress and sinks."""
