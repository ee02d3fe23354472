"""The explain page's what-if, answered: one model's knobs (or the worker's reservation) changed,
every verdict of this node recomputed, the live state untouched.

The query itself (its fields, parsing, link, ``WhatIf.apply``) is present/what_if_query.py;
``WhatIfs`` computes what-ifs in a worker thread, one at a time, with a time budget for the fix
search; the last few results are kept by the live plan (app/plan.py ``Plan.what_ifs``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..present.report import plan_report
from ..present.what_if_query import (FIELDS, KV_CACHE_DTYPES, MAX_VALUE_CHARS, NO_CLAIM, PATH, WhatIf,  # noqa: F401
                                     WhatIfError, from_fix, parse)
from ..snapshot import NodeSnapshot
from .plan import Planner


FIX_SEARCH_SECONDS = 2.0  # a what-if's fix search stops here; its verdicts are complete before it starts
CACHED = 16


@dataclass(slots=True)
class Outcome:
    what_if: WhatIf
    report: dict  # this node's verdicts with the what-if applied
    page: bytes | None = None  # its page, once rendered (kept with it)


class Busy(Exception):
    """Another what-if is being computed: the caller answers 429 at once rather than queue."""


class WhatIfs:
    """Computes what-ifs off the event loop, one at a time; the live plan keeps the last ``CACHED``."""

    def __init__(self, fix_seconds: float = FIX_SEARCH_SECONDS) -> None:
        self._fix_seconds = fix_seconds
        self._running = False

    async def run(self, what_if: WhatIf, plan, snapshot: NodeSnapshot, extra: Mapping | None = None,
                  beside: object = None) -> Outcome:
        """``plan``: the live plan (its fit read, never changed; it keeps the outcome); ``extra``: keys copied into the report as they
        are (the live cluster view); ``beside``: the live report it is shown with. A kept outcome is
        served for the same what-if, readings and live report (by value). Raises WhatIfError, Busy."""
        inputs = what_if.apply(plan.inputs)
        kept = plan.what_ifs
        key = (what_if, snapshot)
        cached = kept.get(key)
        if cached is not None and (cached[0] is beside or cached[0] == beside):
            kept.move_to_end(key)
            return cached[1]
        if self._running:
            raise Busy()
        self._running = True
        try:
            report = await asyncio.to_thread(self._report, inputs, snapshot)
        finally:
            self._running = False
        report.update(extra or {})
        outcome = Outcome(what_if, report)
        kept[key] = (beside, outcome)
        while len(kept) > CACHED:
            kept.popitem(last=False)
        return outcome

    def _report(self, inputs: NodeInputs, snapshot: NodeSnapshot) -> dict:
        deadline = time.monotonic() + self._fix_seconds
        plan = Planner().build_now(inputs, snapshot, stale=lambda: time.monotonic() > deadline)
        return plan_report(plan, snapshot)
