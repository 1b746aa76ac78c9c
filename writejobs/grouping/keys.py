"""Every Redis key writejobs uses (the Lua scripts that move ids between them are the
`.lua` files beside `autobatch.py`, which loads them).

Redis holds only operation ids (never record data), so it can be rebuilt from
SQL. Keys, under a namespace prefix:

    {ns}:buf:{group}      zset  pending member op ids, scored by their due time (epoch s)
    {ns}:due              zset  group -> its earliest member's due time
    {ns}:batch:{id}       hash  a claimed batch: group, reason, claimed_at, earliest_due, members
    {ns}:unsent           zset  claimed batches whose task is not known to be sent, by claim time
    {ns}:retry            zset  waits for a next attempt: `op:<id>` / `batch:<id>` by due time
    {ns}:metrics          hash  the fleet's counters and histograms (writejobs/runtime/metrics.py)
    {ns}:metrics:history  list  per-minute snapshots of a few metrics, newest first, 60 kept
                                (writejobs/runtime/metrics_history.py; the console's charts)
    {ns}:metrics:minute:{m} str a claim: minute m's snapshot is taken (expires)
    {ns}:rl:{account}     hash  an account's learned limit, pause and daily pacing (limiter.py)
    {ns}:rl:{account}:w   zset  calls admitted in the account's window, scored by time (epoch s)
    {ns}:rl:{account}:c   zset  the same, for the installation's configured limit
    {ns}:rl-accounts      zset  accounts by when a call last asked (the budget gauge's index)
    {ns}:adm:…                  the fair-share admission's rings and ready sets (admission.py)
    {ns}:quota:{project}  hash  a project's intake token bucket (quota.py)

A group is one provider batch's worth of compatible records: one installation
(project, integration, groupRef), one object, one write type.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "wj"
BATCH_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str = DEFAULT_NAMESPACE

    def buffer(self, group: str) -> str:
        return f"{self.namespace}:buf:{group}"

    @property
    def due(self) -> str:
        return f"{self.namespace}:due"

    def batch(self, batch_id: str) -> str:
        return f"{self.namespace}:batch:{batch_id}"

    @property
    def unsent(self) -> str:
        return f"{self.namespace}:unsent"

    @property
    def metrics(self) -> str:
        return f"{self.namespace}:metrics"

    @property
    def metrics_history(self) -> str:
        return f"{self.namespace}:metrics:history"

    def metrics_minute(self, minute: int) -> str:
        return f"{self.namespace}:metrics:minute:{minute}"

    @property
    def retry(self) -> str:
        return f"{self.namespace}:retry"

    def rate_limit(self, account: str) -> str:
        return f"{self.namespace}:rl:{account}"

    def rate_window(self, account: str) -> str:
        return f"{self.namespace}:rl:{account}:w"

    def rate_cap_window(self, account: str) -> str:
        return f"{self.namespace}:rl:{account}:c"

    @property
    def rate_accounts(self) -> str:
        return f"{self.namespace}:rl-accounts"


def group_key(installation_id: str, object_name: str, write_type: str) -> str:
    """The installation id already pins project, integration and groupRef."""
    return f"{installation_id}|{object_name}|{write_type}"


def installation_of(group: str) -> str:
    """The installation a `group_key` names."""
    return group.split("|", 1)[0]
