"""Mapping benchmark: Graph alert bytes -> Alert -> OCSF bytes, against a plain JSON round trip.

    .venv/bin/python bench/normalise.py [--alerts 10000] [--repeat 5]

Builds realistic alerts with evidence (tests/peers/alert_factory.py), serialises them to
JSON bytes, then measures, best of --repeat runs over every alert:
  (a) orjson.loads + orjson.dumps of each alert (the floor any JSON forwarder pays);
  (b) orjson.loads -> normalise -> Alert -> ocsf.encode of each alert.
It prints alerts/s for both and the ratio (b)/(a) (target <= 5), then where (b)'s time goes.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' alert factory is not installed

from core.schema import TenantRef  # noqa: E402
from mappings import ocsf  # noqa: E402
from mappings.graph_alerts_v2 import normalise  # noqa: E402
from tests.peers.alert_factory import make_alerts  # noqa: E402

TENANT = TenantRef(id="22222222-2222-4222-8222-222222222222", label="contoso")


def build(count: int) -> list[bytes]:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    return [orjson.dumps(alert) for alert in make_alerts(count, TENANT.id, start, timedelta(seconds=5), seed=1)]


def best_seconds(step: Callable[[Any], object], inputs: Sequence[Any], repeat: int) -> float:
    """The fastest of `repeat` passes of `step` over every input (collector paused, as a
    forwarder's steady state allocates and frees the same shapes)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        for item in inputs:
            step(item)
        best = min(best, time.perf_counter() - started)
        gc.enable()
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    blobs = build(args.alerts)
    ingested = datetime.now(timezone.utc)
    evidence = sum(len(orjson.loads(blob)["evidence"]) for blob in blobs)
    size = sum(map(len, blobs))
    print(f"{args.alerts} alerts, {evidence / args.alerts:.1f} evidence and {size / args.alerts / 1024:.1f} KiB each; "
          f"best of {args.repeat}")

    def round_trip(blob: bytes) -> bytes:
        return orjson.dumps(orjson.loads(blob))

    def pipeline(blob: bytes) -> bytes:
        return ocsf.encode(normalise(orjson.loads(blob), TENANT, ingested))

    plain = best_seconds(round_trip, blobs, args.repeat)
    mapped = best_seconds(pipeline, blobs, args.repeat)
    print(f"(a) orjson loads+dumps:                 {args.alerts / plain:>9,.0f} alerts/s  {plain / args.alerts * 1e6:6.1f} µs/alert")
    print(f"(b) loads -> normalise -> OCSF bytes:   {args.alerts / mapped:>9,.0f} alerts/s  {mapped / args.alerts * 1e6:6.1f} µs/alert")
    print(f"ratio (b)/(a): {mapped / plain:.2f}  (target <= 5)")

    raws = [orjson.loads(blob) for blob in blobs]
    alerts = [normalise(raw, TENANT, ingested) for raw in raws]
    stages = {
        "orjson.loads": best_seconds(orjson.loads, blobs, args.repeat),
        "normalise": best_seconds(lambda raw: normalise(raw, TENANT, ingested), raws, args.repeat),
        "ocsf.to_ocsf": best_seconds(ocsf.to_ocsf, alerts, args.repeat),
        "ocsf.encode": best_seconds(ocsf.encode, alerts, args.repeat),
    }
    print("where (b) goes, µs/alert: " + ", ".join(f"{name} {s / args.alerts * 1e6:.1f}" for name, s in stages.items()))

    # The stages above run one at a time over all the alerts, each on data long out of the
    # CPU caches; in (b) every alert goes through all of them at once. The same split, taken
    # as differences of growing prefixes of (b) (each difference also pays for freeing what
    # its stage made):
    prefixes = {
        "orjson.loads": lambda blob: orjson.loads(blob),
        "normalise": lambda blob: normalise(orjson.loads(blob), TENANT, ingested),
        "ocsf.to_ocsf": lambda blob: ocsf.to_ocsf(normalise(orjson.loads(blob), TENANT, ingested)),
        "orjson.dumps": pipeline,
    }
    before, split = 0.0, []
    for name, step in prefixes.items():
        seconds = best_seconds(step, blobs, args.repeat)
        split.append(f"{name} {(seconds - before) / args.alerts * 1e6:.1f}")
        before = seconds
    print("in (b) itself, µs/alert:  " + ", ".join(split))


if __name__ == "__main__":
    main()
