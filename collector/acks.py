"""Build the commit acks for one ingested payload (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from collector.model import Rejected, Verdict
from edge_agent.contract.wire import Ack, to_ranges


def as_stored(verdict: Verdict, diverted: Sequence[Rejected]) -> Verdict:
    """The verdict after the store: `diverted` accepted events (conflicts, refused by the
    transaction) count as rejected, so the edge is acked for them and stops resending."""
    if not diverted:
        return verdict
    moved = {(d.epoch, d.seq) for d in diverted}
    return Verdict([r for r in verdict.accepted if (r.epoch, r.seq) not in moved],
                   [*verdict.rejected, *diverted])


def build_acks(verdict: Verdict) -> list[Ack]:
    """One ack per epoch (epochs of accepted events first, in order of appearance).

    `committed`: seqs of accepted events (new or duplicates: both are in the store now).
    `rejected`: seqs of quarantined events that carried a well-formed epoch and seq;
    a whole-payload rejection has neither, so the edge resends it (and it is quarantined
    again) until someone fixes the sender.
    """
    committed: dict[str, set[int]] = {}
    rejected: dict[str, set[int]] = {}
    for row in verdict.accepted:
        committed.setdefault(row.epoch, set()).add(row.seq)
        rejected.setdefault(row.epoch, set())
    for rej in verdict.rejected:
        if rej.epoch is not None and rej.seq is not None:
            committed.setdefault(rej.epoch, set())
            rejected.setdefault(rej.epoch, set()).add(rej.seq)
    return [Ack(epoch, to_ranges(seqs), to_ranges(rejected[epoch] - seqs))
            for epoch, seqs in committed.items()]
