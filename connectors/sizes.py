"""Requests within the size a destination takes, and what a 413 ("too large") teaches.

A 413 means the destination has a limit of its own, below what was sent: the request is
halved and sent again at once, and half its size is kept as the limit for the rest of the
run, so that later batches go out in requests that fit instead of meeting 413s again. One
event that is still too large on its own can never be delivered: a dead letter.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from connectors.base import BatchResults, EventResult

FLOOR = 1024  # bytes: no limit learnt from 413s goes below it


class RequestLimit:
    """The most bytes one request may carry (None: no limit known yet)."""

    def __init__(self, limit: int | None, sink: str, destination: str, log: logging.Logger) -> None:
        self.bytes = limit
        self.sink = sink
        self.destination = destination  # as the warning names it, e.g. "Splunk"
        self.log = log

    def requests(self, indexes: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
        """`indexes` (into the batch, each event `sizes[i]` bytes) grouped in order into
        requests within the limit; an event larger than the limit goes alone."""
        if self.bytes is None:
            return [list(indexes)] if indexes else []
        requests: list[list[int]] = []
        size = self.bytes + 1
        for i in indexes:
            if size + sizes[i] > self.bytes:
                requests.append([])
                size = 0
            requests[-1].append(i)
            size += sizes[i]
        return requests

    def refused(self, chunk: list[int], size: int, results: BatchResults, too_large: EventResult) -> list[list[int]]:
        """A 413 for the request of `chunk` (`size` bytes): its two halves, to send at once,
        with the limit lowered to half of `size`; or, for a single event, `too_large` as its
        result and nothing to send."""
        if len(chunk) == 1:
            results[chunk[0]] = too_large
            return []
        self.bytes = max(FLOOR, min(self.bytes or size, size // 2))
        self.log.warning("sink %s: %s refused %d bytes (413); requests now stay under %d bytes",
                         self.sink, self.destination, size, self.bytes)
        half = len(chunk) // 2
        return [chunk[:half], chunk[half:]]
