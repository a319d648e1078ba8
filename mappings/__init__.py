"""Mappings: Defender source shapes -> `core.schema.Alert` -> each output format.

Every output format is a module with `encode(alert: Alert) -> bytes` returning one
line (no trailing newline). Format modules are imported on first use so that
`--help` and cron start-up stay fast.
"""
