"""Batch scoring: a UCI-format file scored locally (`readmit predict`), and the nightly batch state machine's steps on
AWS (events, CSV rows without pandas, scored output and summary). Depends on registry and below."""

__all__ = ["errors", "events", "job", "local", "output", "rows"]
