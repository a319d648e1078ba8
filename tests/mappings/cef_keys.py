"""The extension keys a CEF line of ours may hold, for the strict parser's `known_keys`: the
CEF specification's key dictionary (`tests/cef_parser.KNOWN_KEYS`) and the evidence identity
keys, named here from `mappings/evidence.py`'s IDENTITIES by the documented rule (not read
from `mappings/cef.py`, so that a test can tell the encoder its names are wrong):

    ms + Graph evidence type + the identity's camelCase property path (first letter upper)

and for the n-th distinct value (n >= 2) of one key in one alert, that key + `N<n>`.
"""
from __future__ import annotations

import re

from mappings.evidence import IDENTITIES, Identity
from tests.cef_parser import KNOWN_KEYS

MAX_NUMBER = 64  # numbered keys the tests accept (an alert of the tests has far fewer)


def evidence_key(evidence_type: str, row: Identity) -> str:
    return "ms" + evidence_type[:1].upper() + evidence_type[1:] + row.name[:1].upper() + row.name[1:]


def numbered(key: str, n: int) -> str:
    return key if n == 1 else f"{key}N{n}"


# base key -> (evidence type, identity row)
EVIDENCE_KEYS: dict[str, tuple[str, Identity]] = {
    evidence_key(name, row): (name, row) for name, rows in IDENTITIES.items() for row in rows}
CEF_KEYS = frozenset(KNOWN_KEYS | {numbered(key, n) for key in EVIDENCE_KEYS for n in range(1, MAX_NUMBER + 1)})
_NUMBER = re.compile(r"N([0-9]+)\Z")


def split_key(key: str) -> tuple[str, int] | None:
    """(base evidence key, n) of an evidence key; None for any other key."""
    if key in EVIDENCE_KEYS:
        return key, 1
    match = _NUMBER.search(key)
    if match and key[: match.start()] in EVIDENCE_KEYS and int(match.group(1)) >= 2:
        return key[: match.start()], int(match.group(1))
    return None
