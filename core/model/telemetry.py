"""The forwarder's Prometheus metrics: one registry of our own (not prometheus_client's global
one), and the metric objects every layer that counts imports from here (the model layer, so
sources, delivery and the app all may).

The names are agreed with the alert rules and the dashboard (examples/prometheus,
examples/grafana); docs/metrics.md lists each, and a test checks it against what is exposed.
Labels are the tenant's label, the source kind, the sink's name: never an alert id, so the
number of series stays bounded by the configuration.

The gauges that mirror the state (outbox depth and oldest age, lag, last success, sink state)
are not here: core/app/metrics.py reads them from the store and the workers at scrape time,
so they are never stale.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics

# `_created` series would double the counters' series for nothing an alert rule uses.
disable_created_metrics()

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, process_cpu_seconds_total, ...

PREFIX = "defender_forwarder_"
TENANT_SOURCE = ("tenant", "source")

# ---- per tenant and source --------------------------------------------------------------
POLLS = Counter(PREFIX + "polls_total", "Windows polled, by result: ok, failed, or throttled (failed after a 429)",
                [*TENANT_SOURCE, "result"], registry=REGISTRY)
ALERTS_READ = Counter(PREFIX + "alerts_read_total", "Alerts read from the source (the overlap re-read included)",
                      TENANT_SOURCE, registry=REGISTRY)
VERSIONS_NEW = Counter(PREFIX + "alert_versions_new_total", "Alert versions not seen before, taken by the forwarder",
                       TENANT_SOURCE, registry=REGISTRY)
DUPLICATES = Counter(PREFIX + "alert_duplicates_total", "Alert versions read again and skipped (seen before)",
                     TENANT_SOURCE, registry=REGISTRY)
FILTERED = Counter(PREFIX + "alerts_filtered_total", "New alert versions no route took, by reason",
                   [*TENANT_SOURCE, "reason"], registry=REGISTRY)
SOURCE_DEAD = Counter(PREFIX + "source_dead_letters_total", "Alerts that could not be normalised (dead letters)",
                      TENANT_SOURCE, registry=REGISTRY)
THROTTLED = Counter(PREFIX + "throttled_total", "HTTP 429 answers from the source", TENANT_SOURCE, registry=REGISTRY)
RETRY_AFTER = Counter(PREFIX + "retry_after_seconds_total", "Seconds waited as Retry-After asked",
                      TENANT_SOURCE, registry=REGISTRY)
REQUEST_DURATION = Histogram(PREFIX + "request_duration_seconds", "Duration of one request to the source",
                             TENANT_SOURCE, buckets=(.1, .25, .5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
AUTH_STATES = ("ok", "consent_missing", "consent_revoked", "credential_invalid", "unknown")
AUTH_STATE = Gauge(PREFIX + "auth_state", "1 for the tenant's current authentication state, 0 for the others",
                   ["tenant", "state"], registry=REGISTRY)
CERTIFICATE_EXPIRY = Gauge(PREFIX + "certificate_expiry_seconds",
                           "Seconds until the app's certificate expires (apps with a certificate only)",
                           ["app"], registry=REGISTRY)

# ---- per sink -------------------------------------------------------------------------
DELIVERED = Counter(PREFIX + "events_delivered_total", "Events the sink acknowledged", ["sink"], registry=REGISTRY)
RETRIED = Counter(PREFIX + "events_retried_total", "Events whose sending failed transiently, to be sent again",
                  ["sink"], registry=REGISTRY)
DEAD_LETTERED = Counter(PREFIX + "events_dead_lettered_total",
                        "Events the sink refused for good, or its format could not encode (dead letters)",
                        ["sink"], registry=REGISTRY)
BATCH_DURATION = Histogram(PREFIX + "batch_duration_seconds", "Duration of sending one batch to the sink", ["sink"],
                           buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=REGISTRY)

# ---- process --------------------------------------------------------------------------
CYCLE_DURATION = Histogram(PREFIX + "cycle_duration_seconds",
                           "Duration of a cycle: run --once's; the daemon's longest tenant poll in the period",
                           buckets=(1, 5, 10, 30, 60, 120, 300, 600), registry=REGISTRY)
CYCLES = Counter(PREFIX + "cycles_total", "Poll cycles, by result: ok, or partial (a tenant or a sink failed)",
                 ["result"], registry=REGISTRY)
BUILD_INFO = Gauge(PREFIX + "build_info", "Always 1: the forwarder's version and Python's", ["version", "python"],
                   registry=REGISTRY)


def set_auth_state(tenant: str, state: str) -> None:
    """The tenant's auth state: 1 for `state`, 0 for the others (one series per state, as
    Prometheus exporters write an enum)."""
    for name in AUTH_STATES:
        AUTH_STATE.labels(tenant, name).set(1 if name == state else 0)

