"""Mapping benchmark: Graph alert bytes -> Alert -> each output format's bytes, against a plain JSON round trip.

    .venv/bin/python bench/normalise.py [--alerts 10000] [--repeat 5]

Builds realistic alerts with evidence (tests/peers/alert_factory.py), serialises them to
JSON bytes, then measures in one run, best of --repeat passes over every alert (the passes
of all the steps interleaved, so that drift of the machine hits them alike):
  (a)   orjson.loads + orjson.dumps of each alert (the floor any JSON forwarder pays);
  (b_f) orjson.loads -> normalise -> Alert -> encode_f of each alert, for every output
        format f (raw, ocsf, ecs, cim, cef), through `mappings.encoder(f)`.
It prints one line per format: alerts/s, µs/alert and the ratio (b_f)/(a) against its target
(raw, cef, cim <= 4; ocsf <= 5; ecs <= 6); then where the time goes: parsing, normalising,
and each format's own encoding (the differences of the steps' growing prefixes).
Then the same for Graph incidents (issue 18), in the same run: (a) and (b_f) over as many
generated incidents (`make_incidents`: Graph's documented shape, with comments, tags and
linked alert ids), normalised by `mappings.graph_incidents`, printed as µs/incident beside
the alert figures; and for Defender for Endpoint API alerts (`mde_alerts`): the same generated
alerts in MDE's `/api/alerts` shape with `$expand=evidence` (tests/peers/fake_mde.py, as the
simulated cloud serves them), normalised by `mappings.mde_alerts`, printed as µs/MDE alert.
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

import mappings  # noqa: E402
from core.model.schema import TenantRef  # noqa: E402
from mappings.graph_alerts_v2 import normalise  # noqa: E402
from mappings.graph_incidents import normalise as normalise_incident  # noqa: E402
from mappings.mde_alerts import normalise as normalise_mde  # noqa: E402
from tests.peers.alert_factory import make_alerts  # noqa: E402
from tests.peers.fake_mde import mde_alert  # noqa: E402

TENANT = TenantRef(id="22222222-2222-4222-8222-222222222222", label="contoso")
# (b)/(a) at most, per format.
TARGETS = {"raw": 4.0, "cef": 4.0, "cim": 4.0, "ocsf": 5.0, "ecs": 6.0,
           # (new formats: not measured yet; the cef line plus its reading back, and cim-like work)
           "sentinel": 5.0, "commonsecuritylog": 6.0}


def build(count: int) -> list[bytes]:
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    return [orjson.dumps(alert) for alert in make_alerts(count, TENANT.id, start, timedelta(seconds=5), seed=1)]


def make_mde_alerts(count: int) -> list[bytes]:
    """`count` MDE API alerts as JSON bytes: the generated Graph alerts (evidence and all) as
    `/api/alerts?$expand=evidence` sends them (flat evidence, PascalCase enums)."""
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    return [orjson.dumps(mde_alert(alert, expand=True))
            for alert in make_alerts(count, TENANT.id, start, timedelta(seconds=5), seed=1)]


_STATUSES = ("active", "inProgress", "resolved", "redirected", "awaitingAction")
_SEVERITIES = ("informational", "low", "medium", "high")


def make_incidents(count: int) -> list[bytes]:
    """`count` Graph incidents as JSON bytes: the documented shape, varied per incident."""
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    incidents = []
    for n in range(count):
        updated = start + timedelta(seconds=5 * n)
        incidents.append(orjson.dumps({
            "@odata.type": "#microsoft.graph.security.incident", "id": str(100000 + n), "tenantId": TENANT.id,
            "incidentWebUrl": f"https://security.microsoft.com/incidents/{100000 + n}?tid={TENANT.id}",
            "redirectIncidentId": str(n - 1) if n % 5 == 3 else None,
            "displayName": f"Multi-stage incident involving Initial access on {n % 7 + 1} endpoints",
            "description": "Microsoft observed activity spreading through infected USB devices. " * 3,
            "createdDateTime": (updated - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "lastUpdateDateTime": updated.isoformat().replace("+00:00", "Z"),
            "assignedTo": f"analyst{n % 4}@contoso.onmicrosoft.com" if n % 3 else None,
            "classification": "truePositive", "determination": "multiStagedAttack",
            "status": _STATUSES[n % len(_STATUSES)], "severity": _SEVERITIES[n % len(_SEVERITIES)],
            "customTags": ["Demo"], "systemTags": ["Defender Experts"], "priorityScore": n % 100,
            "comments": [{"comment": "Looked at it", "createdBy": "DavidS@contoso.onmicrosoft.com",
                          "createdTime": "2026-11-01T12:07:37.2756993Z"}],
            "alertIds": [f"da6375512276775{n:05d}_{k}" for k in range(n % 6 + 1)],
        }))
    return incidents


def encoder(name: str) -> tuple[Callable[[Any], bytes] | None, str]:
    """(format `name`'s encode, a note); (None, why) when it cannot be had."""
    try:
        return mappings.encoder(name), ""
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


def kind_pipelines(kind: str, records: list[bytes], normalise_kind: Callable[..., Any], ingested: datetime,
                   alert_steps: dict[str, Any], notes: dict[str, str]) -> dict[str, Callable[[Any], object]]:
    """The steps of another kind: `<kind> (a)`, its round trip, and `<kind> <format>` for each
    format the alerts measure, bytes -> its mapping -> the format's bytes."""

    def pipeline(encode: Callable[[Any], bytes]) -> Callable[[bytes], bytes]:
        return lambda blob: encode(normalise_kind(orjson.loads(blob), TENANT, ingested))

    steps: dict[str, Callable[[Any], object]] = {f"{kind} (a)": lambda blob: orjson.dumps(orjson.loads(blob))}
    for name in mappings.OUTPUT_FORMATS:
        if name in alert_steps:
            encode = mappings.encoder(name)
            try:
                pipeline(encode)(records[0])
            except Exception as error:  # noqa: BLE001 - report it, measure the rest
                notes[f"{kind} {name}"] = f"not available ({type(error).__name__}: {error})"
                continue
            steps[f"{kind} {name}"] = pipeline(encode)
    return steps


def kind_line(kind: str, unit: str, seconds: dict[str, float], count: int) -> str:
    """Another kind's figures: µs per record and format, against its own round trip, the
    alert's beside them."""
    plain = seconds[f"{kind} (a)"]
    figures = ", ".join(
        f"{name} {seconds[f'{kind} {name}'] / count * 1e6:.1f} "
        f"({seconds[f'{kind} {name}'] / plain:.2f}x; alert {seconds[name] / count * 1e6:.1f})"
        for name in mappings.OUTPUT_FORMATS if f"{kind} {name}" in seconds)
    return (f"{unit}s, µs/{unit} (bytes->{'Incident' if kind == 'incident' else 'Alert'}->format, (b)/(a) "
            f"against the {unit}s' own round trip {plain / count * 1e6:.1f} µs): {figures}")


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
        try:  # a format being written may fail on every alert: report it, measure the rest
            if encode is not None:
                pipeline(encode)(blobs[0])
        except Exception as error:  # noqa: BLE001
            encode, notes[name] = None, f"not available ({type(error).__name__}: {error})"
        if encode is not None:
            steps[name] = pipeline(encode)
    # The other kinds, over as many records each: (a) and (b_f) with their own mapping.
    kinds = {"incident": (make_incidents(args.alerts), normalise_incident),
             "mde": (make_mde_alerts(args.alerts), normalise_mde)}
    kind_inputs: dict[str, list[bytes]] = {}
    for kind, (records, normalise_kind) in kinds.items():
        for name, step in kind_pipelines(kind, records, normalise_kind, ingested, steps, notes).items():
            steps[name] = step
            kind_inputs[name] = records
    # Where the time goes: parsing and normalising, the differences of growing prefixes (each
    # difference also pays for freeing what its stage made); a format's own encoding is its
    # pipeline less both.
    steps["prefix parse"] = lambda blob: orjson.loads(blob)
    steps["prefix normalise"] = lambda blob: normalise(orjson.loads(blob), TENANT, ingested)
    inputs = {name: kind_inputs.get(name, blobs) for name in steps}
    seconds = best_seconds(steps, inputs, args.repeat)

    def rate(s: float) -> str:
        return f"{args.alerts / s:>9,.0f} alerts/s {s / args.alerts * 1e6:6.1f} µs/alert"

    plain = seconds["(a)"]
    print(f"(a)  orjson loads+dumps             {rate(plain)}")
    for name in mappings.OUTPUT_FORMATS:
        if name not in seconds:
            print(f"(b)  {name:<4} bytes->Alert->{name:<4} bytes  {notes[name]}")
            continue
        ratio = seconds[name] / plain
        verdict = "within target" if ratio <= TARGETS[name] else "OVER TARGET"
        print(f"(b)  {name:<4} bytes->Alert->{name:<4} bytes  {rate(seconds[name])}  "
              f"(b)/(a) {ratio:4.2f} {verdict} (<= {TARGETS[name]:g}){notes[name]}")
    parse, normalised = seconds["prefix parse"], seconds["prefix normalise"]
    own = ", ".join(f"{name} {(seconds[name] - normalised) / args.alerts * 1e6:.1f}"
                    for name in mappings.OUTPUT_FORMATS if name in seconds)
    print(f"where the time goes, µs/alert: parse {parse / args.alerts * 1e6:.1f}, "
          f"normalise {(normalised - parse) / args.alerts * 1e6:.1f} (/(a) {(normalised - parse) / plain:.2f}); "
          f"each format's own encoding: {own}")
    for kind, unit in (("incident", "incident"), ("mde", "MDE alert")):
        print(kind_line(kind, unit, seconds, args.alerts))


if __name__ == "__main__":
    main()
