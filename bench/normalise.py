"""Mapping benchmark: Graph alert bytes -> Alert -> each output format's bytes, against a plain JSON round trip.

    .venv/bin/python bench/normalise.py [--alerts 10000] [--repeat 5]

Builds realistic alerts with evidence (tests/peers/alert_factory.py), serialises them to
JSON bytes, then measures in one run, best of --repeat passes over every alert (the passes
of all the steps interleaved, so that drift of the machine hits them alike):
  (a)   orjson.loads + orjson.dumps of each alert (the floor any JSON forwarder pays);
  (b_f) orjson.loads -> normalise -> Alert -> encode_f of each alert, for every output
        format f (raw, ocsf, ecs, cim, cef), through `mappings.encoder(f)`.
It prints one line per format: alerts/s, µs/alert and the ratio (b_f)/(a) (target <= 5);
a format that is not implemented yet is printed as not available. Then where OCSF's time goes.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from importlib import import_module
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' alert factory is not installed

import mappings  # noqa: E402
from core.model.schema import Alert, TenantRef  # noqa: E402
from mappings import ocsf  # noqa: E402
from mappings.graph_alerts_v2 import normalise  # noqa: E402
from tests.peers.alert_factory import make_alerts  # noqa: E402

TENANT = TenantRef(id="22222222-2222-4222-8222-222222222222", label="contoso")
TARGET = 5.0


def build(count: int) -> list[bytes]:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    return [orjson.dumps(alert) for alert in make_alerts(count, TENANT.id, start, timedelta(seconds=5), seed=1)]


def encoder(name: str) -> tuple[Callable[[Any], bytes] | None, str]:
    """(format `name`'s encode, a note); (None, why) when there is none yet. A format not
    registered in mappings.AVAILABLE_FORMATS but whose module exists is imported directly."""
    try:
        return mappings.encoder(name), ""
    except mappings.FormatNotAvailable:
        if not (REPO / "mappings" / f"{name}.py").exists():
            return None, "not available"
        note = "  (module not registered yet)"
    try:
        return import_module(f"mappings.{name}").encode, note
    except Exception as error:  # noqa: BLE001 - a module being written: report it, measure the rest
        return None, f"not available ({type(error).__name__}: {error})"


def best_seconds(steps: dict[str, Callable[[Any], object]], inputs: dict[str, Sequence[Any]],
                 repeat: int) -> dict[str, float]:
    """For each step, the fastest of `repeat` passes over its inputs; the passes of all
    steps interleaved, collector paused (a forwarder's steady state allocates and frees the
    same shapes)."""
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeat):
        for name, step in steps.items():
            gc.collect()
            gc.disable()
            started = time.perf_counter()
            for item in inputs[name]:
                step(item)
            best[name] = min(best[name], time.perf_counter() - started)
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

    def pipeline(encode: Callable[[Any], bytes]) -> Callable[[bytes], bytes]:
        return lambda blob: encode(normalise(orjson.loads(blob), TENANT, ingested))

    steps: dict[str, Callable[[Any], object]] = {"(a)": lambda blob: orjson.dumps(orjson.loads(blob))}
    notes: dict[str, str] = {}
    for name in mappings.OUTPUT_FORMATS:
        encode, notes[name] = encoder(name)
        if encode is not None:
            steps[name] = pipeline(encode)
    # Where OCSF's time goes, in the pipeline itself: differences of its growing prefixes
    # (each difference also pays for freeing what its stage made).
    prefixes = {
        "orjson.loads": lambda blob: orjson.loads(blob),
        "normalise": lambda blob: normalise(orjson.loads(blob), TENANT, ingested),
        "ocsf.to_ocsf": lambda blob: ocsf.to_ocsf(normalise(orjson.loads(blob), TENANT, ingested)),
    }
    steps.update({f"prefix {name}": step for name, step in prefixes.items()})
    alert_json = [normalise(orjson.loads(blob), TENANT, ingested).model_dump_json(exclude={"raw"}) for blob in blobs]
    floor_inputs = dict.fromkeys(steps, blobs) | {"floor": alert_json}
    steps["floor"] = Alert.model_validate_json
    seconds = best_seconds(steps, floor_inputs, args.repeat)

    def rate(s: float) -> str:
        return f"{args.alerts / s:>9,.0f} alerts/s {s / args.alerts * 1e6:6.1f} µs/alert"

    plain = seconds["(a)"]
    print(f"(a)  orjson loads+dumps             {rate(plain)}")
    for name in mappings.OUTPUT_FORMATS:
        if name not in seconds:
            print(f"(b)  {name:<4} bytes->Alert->{name:<4} bytes  {notes[name]}")
            continue
        ratio = seconds[name] / plain
        verdict = "within target" if ratio <= TARGET else "OVER TARGET"
        print(f"(b)  {name:<4} bytes->Alert->{name:<4} bytes  {rate(seconds[name])}  "
              f"(b)/(a) {ratio:4.2f} {verdict} (<= {TARGET:g}){notes[name]}")
    split, before = [], 0.0
    for name, total in [*((name, seconds[f"prefix {name}"]) for name in prefixes), ("orjson.dumps", seconds["ocsf"])]:
        split.append(f"{name} {(total - before) / args.alerts * 1e6:.1f}")
        before = total
    print("ocsf split, µs/alert: " + ", ".join(split))
    floor = seconds["floor"]
    print(f"floor: pydantic Alert.model_validate_json of the normalised alert (no raw)  {rate(floor)}  "
          f"/(a) {floor / plain:4.2f}")


if __name__ == "__main__":
    main()
