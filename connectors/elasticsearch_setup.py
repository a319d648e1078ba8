"""`defender-forwarder setup elasticsearch`: the index template and ILM policy our data streams need
(what `ElasticsearchConnector.setup` installs, and `check` looks for).

A template matches the sink's data streams (`data_stream` with `{tenant}` as `*`; incidents
have their own, `INCIDENT_TEMPLATE_NAME` for `data_stream_incident`), makes
them data streams, sets the ILM policy and maps every field the `ecs` format writes (table
`FIELD_TYPES`): `@timestamp` and the other times as dates, addresses as `ip`, counts as
`long`, ids and names as `keyword`, `message` as text. Defender's vendor objects whose shape
varies from alert to alert (evidence, additionalData, customDetails) are `flattened`, so no
alert can cause a mapping conflict; anything else a document carries stays in `_source`
unindexed (`dynamic: false`) rather than be refused. For the other formats the template maps
`@timestamp` and `message` only.

Idempotent: each body carries a digest of itself in `_meta`; what the cluster already has
with the same digest is left alone, so a second run changes nothing. `--dry-run` prints the
requests instead of sending them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

TEMPLATE_NAME = "defender-forwarder-alerts"
INCIDENT_TEMPLATE_NAME = "defender-forwarder-incidents"
POLICY_NAME = "defender-forwarder-alerts"
ROLLOVER = {"max_age": "30d", "max_primary_shard_size": "50gb"}

_DATES = """@timestamp event.created event.start event.end event.ingested email.delivery_timestamp process.start
process.parent.start defender_forwarder.ingested m365_defender.alert.created_datetime
m365_defender.alert.first_activity_datetime m365_defender.alert.last_activity_datetime
m365_defender.alert.last_update_datetime m365_defender.alert.resolved_datetime
m365_defender.alert.comments.created_datetime"""
_IPS = "host.ip related.ip source.ip destination.ip client.ip"
_LONGS = "event.duration event.severity file.size process.pid process.parent.pid"
_TEXTS = "message"
_FLATTENED = """m365_defender.alert.evidence m365_defender.alert.additional_data
m365_defender.alert.custom_details m365_defender.alert.extra"""
_KEYWORDS = """cloud.account.id cloud.instance.id cloud.instance.name cloud.provider defender_forwarder.customer
defender_forwarder.source defender_forwarder.tenant_id defender_forwarder.version_key device.id ecs.version
email.direction email.from.address email.local_id email.message_id email.sender.address email.subject
email.to.address event.action event.category event.id event.kind event.provider event.type event.url
event.dataset event.module file.hash.md5 file.hash.sha1 file.hash.sha256 file.name file.path group.id group.name
host.id host.name host.hostname host.domain host.os.name host.os.version organization.id organization.name
process.command_line process.entity_id process.executable process.hash.md5 process.hash.sha1 process.hash.sha256
process.name process.parent.entity_id process.parent.executable process.parent.name process.parent.hash.md5
process.parent.hash.sha1 process.parent.hash.sha256 process.user.id process.user.name registry.data.type
registry.data.strings registry.hive registry.key registry.path registry.value related.hash related.hosts
related.user source.user.name threat.framework threat.group.name threat.tactic.name threat.tactic.id
threat.technique.id threat.technique.name threat.technique.subtechnique.id url.full url.domain url.path
url.scheme url.original user.domain user.email user.id user.name user.full_name
data_stream.type data_stream.dataset data_stream.namespace
m365_defender.alert.actor_display_name m365_defender.alert.alert_policy_id m365_defender.alert.assigned_to
m365_defender.alert.categories m365_defender.alert.category m365_defender.alert.classification
m365_defender.alert.comments.created_by_display_name m365_defender.alert.comments.message
m365_defender.alert.detection_source m365_defender.alert.detector_id m365_defender.alert.determination
m365_defender.alert.id m365_defender.alert.incident_id m365_defender.alert.incident_web_url.domain
m365_defender.alert.incident_web_url.original m365_defender.alert.incident_web_url.path
m365_defender.alert.incident_web_url.query m365_defender.alert.incident_web_url.scheme
m365_defender.alert.investigation_state m365_defender.alert.mitre_techniques m365_defender.alert.product_name
m365_defender.alert.provider_alert_id m365_defender.alert.recommended_actions m365_defender.alert.service_source
m365_defender.alert.severity m365_defender.alert.status m365_defender.alert.system_tags
m365_defender.alert.tenant_id m365_defender.alert.threat_display_name m365_defender.alert.threat_family_name
m365_defender.alert.title m365_defender.alert.alert_web_url"""

# Every field the `ecs` format writes -> its Elasticsearch type (tests check the coverage).
FIELD_TYPES: dict[str, str] = {
    **dict.fromkeys(_KEYWORDS.split(), "keyword"),
    **dict.fromkeys(_DATES.split(), "date"),
    **dict.fromkeys(_IPS.split(), "ip"),
    **dict.fromkeys(_LONGS.split(), "long"),
    **dict.fromkeys(_TEXTS.split(), "match_only_text"),
    **dict.fromkeys(_FLATTENED.split(), "flattened"),
}
BASE_FIELD_TYPES = {"@timestamp": "date", "message": "match_only_text"}

# An incident's own fields in the `ecs` format, named as Elastic's m365_defender `incident`
# data stream names them (its pipeline fixture), beside the ECS fields alerts share.
_INCIDENT = "m365_defender.incident."
_INCIDENT_DATES = "created_datetime last_update_datetime comments.createdTime"
_INCIDENT_TEXTS = "comments.comment description summary"
_INCIDENT_KEYWORDS = """id display_name status severity classification determination assigned_to tenant_id
tags custom_tags system_tags odata_type redirect_incident_id alert_ids last_modified_by comments.createdBy
web_url.original web_url.domain web_url.path web_url.query web_url.scheme"""
INCIDENT_FIELD_TYPES: dict[str, str] = {
    **FIELD_TYPES,
    **{f"{_INCIDENT}{name}": "keyword" for name in _INCIDENT_KEYWORDS.split()},
    **{f"{_INCIDENT}{name}": "date" for name in _INCIDENT_DATES.split()},
    **{f"{_INCIDENT}{name}": "match_only_text" for name in _INCIDENT_TEXTS.split()},
    **dict.fromkeys("tags source.user.name source.user.domain source.user.email".split(), "keyword"),
    "m365_defender.incident.priority_score": "long",
}


@dataclass(frozen=True)
class Request:
    """One idempotent PUT: `path`, `body`, and the GET that shows what the cluster has."""

    kind: str
    name: str
    path: str
    body: dict[str, Any]


def mappings(field_types: dict[str, str]) -> dict[str, Any]:
    """Dotted names -> Elasticsearch `properties`, nested."""
    root: dict[str, Any] = {}
    for dotted, kind in sorted(field_types.items()):
        node = root
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[leaf] = {"type": kind, "ignore_above": 1024} if kind == "keyword" else {"type": kind}
    return {"dynamic": False, "properties": root}


def template_pattern(data_stream: str) -> str:
    return data_stream.replace("{tenant}", "*")


def requests(data_stream: str, sink_format: str, retention: str,
             incident_stream: str | None = None) -> list[Request]:
    """The ILM policy (rollover, then delete after `retention`) and the index templates of the
    data streams `data_stream` (alerts) and `incident_stream` (incidents) name, mapped for the
    sink's format. Streams of the same pattern share one template, mapped for both kinds; the
    incidents' template outranks the alerts' (201 > 200), so that patterns that overlap
    (an alerts' pattern that also matches the incidents' streams) are allowed and the incident
    streams get theirs."""
    policy = {"policy": {"phases": {"hot": {"actions": {"rollover": ROLLOVER}},
                                    "delete": {"min_age": retention, "actions": {"delete": {}}}}}}
    ecs = sink_format == "ecs"
    shared = incident_stream is not None and template_pattern(incident_stream) == template_pattern(data_stream)
    alert_fields = (INCIDENT_FIELD_TYPES if shared else FIELD_TYPES) if ecs else BASE_FIELD_TYPES
    made = [Request("ILM policy", POLICY_NAME, f"/_ilm/policy/{POLICY_NAME}", _with_digest(policy, "policy")),
            _template_request(TEMPLATE_NAME, data_stream, 200, alert_fields)]
    if incident_stream is not None and not shared:
        made.append(_template_request(INCIDENT_TEMPLATE_NAME, incident_stream, 201,
                                      INCIDENT_FIELD_TYPES if ecs else BASE_FIELD_TYPES))
    return made


def _template_request(name: str, data_stream: str, priority: int, field_types: dict[str, str]) -> Request:
    template = {
        "index_patterns": [template_pattern(data_stream)],
        "data_stream": {},
        "priority": priority,  # above the built-in logs-*-* template (100)
        "template": {"settings": {"index": {"lifecycle": {"name": POLICY_NAME}}},
                     "mappings": mappings(field_types)},
    }
    return Request("index template", name, f"/_index_template/{name}", _with_digest(template))


def _with_digest(body: dict[str, Any], inner: str | None = None) -> dict[str, Any]:
    """`body` with `_meta.digest` (inside `inner` for an ILM policy, where `_meta` lives)."""
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    meta = {"managed_by": "defender-forwarder", "digest": digest}
    if inner is None:
        return {**body, "_meta": meta}
    return {**body, inner: {**body[inner], "_meta": meta}}


def digest_of(request: Request) -> str:
    holder = request.body["policy"] if request.kind == "ILM policy" else request.body
    return holder["_meta"]["digest"]


def digest_in(request: Request, found: dict[str, Any]) -> str | None:
    """The digest of what the cluster answered to the GET of `request.path`."""
    if request.kind == "ILM policy":
        installed = found[request.name]["policy"]
    else:
        installed = found["index_templates"][0]["index_template"]
    return (installed.get("_meta") or {}).get("digest")


def describe(requests: list[Request]) -> str:
    """What `--dry-run` prints: each request as it would be sent."""
    return "\n".join(f"PUT {r.path}\n{orjson.dumps(r.body, option=orjson.OPT_INDENT_2).decode()}" for r in requests)
