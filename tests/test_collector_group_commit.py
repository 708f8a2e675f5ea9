"""Group commit (`Store.ingest_many`) on both backends: several payloads, one transaction,
one result per payload, the same outcome as committing them one after the other."""

from __future__ import annotations

import pytest

from collector.model import Rejected
from collector.store import Origin, Payload, Store
from tests.test_collector_store import query, refuse_quarantine, rows
from tests.test_collector_support import alarm, new_epoch, reading, topics

GW_A = Origin(topics("gw-a").events, "gw-a")
GW_B = Origin(topics("gw-b").events, "gw-b")


def refuse_events_of(store_url: str, device: str) -> None:
    """A trigger that refuses (as a value the store cannot hold) the events of `device`."""
    if store_url.startswith("postgresql"):
        query(store_url, "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$BEGIN IF NEW.device = '" + device + "' THEN RAISE EXCEPTION "
                         "'refused' USING ERRCODE = 'check_violation'; END IF; "
                         "RETURN NEW; END$$")
        query(store_url, "CREATE TRIGGER refuse BEFORE INSERT ON event_rows "
                         "FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        query(store_url, "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.device = '"
                         + device + "' BEGIN SELECT RAISE(ABORT, 'refused'); END")


def test_duplicates_inside_one_group_count_as_duplicates(store: Store, store_url: str) -> None:
    a, b = new_epoch(), new_epoch()
    first = rows([reading("gw-a", a, s) for s in (1, 2, 3)])
    resend = [first[2], *rows([reading("gw-a", a, 4)])]  # queued behind the original
    other = rows([reading("gw-b", b, s) for s in (1, 2)], "gw-b")
    results = store.ingest_many([Payload(GW_A, first, []), Payload(GW_B, other, []),
                                 Payload(GW_A, resend, []), Payload(GW_B, other[:1], [])])
    assert [(r.inserted, r.duplicates, r.conflicts) for r in results] == [
        (3, 0, 0), (2, 0, 0), (1, 1, 0), (0, 1, 0)]
    assert query(store_url, "SELECT COUNT(*) FROM events") == [(6,)]
    streams = {s.epoch: (s.high_seq, s.received, s.contiguous_through)
               for s in store.stats().streams}
    assert streams == {a: (4, 4, 4), b: (2, 2, 2)}
    # and a group of resends only: nothing new, every one a duplicate
    again = store.ingest_many([Payload(GW_A, first, []), Payload(GW_B, other, [])])
    assert [(r.inserted, r.duplicates) for r in again] == [(0, 3), (0, 2)]


def test_an_id_resent_with_other_content_in_the_same_group_is_a_conflict(
        store: Store, store_url: str) -> None:
    epoch = new_epoch()
    original = reading("gw-a", epoch, 1)
    changed = alarm("gw-a", epoch, 1).model_copy(update={"id": original.id})
    results = store.ingest_many([Payload(GW_A, rows([original]), []),
                                 Payload(GW_A, rows([changed]), [])])
    assert [(r.inserted, r.duplicates, r.conflicts, r.quarantined) for r in results] == [
        (1, 0, 0, 0), (0, 0, 1, 1)]
    [diverted] = results[1].diverted
    assert (diverted.event_id, diverted.seq) == (original.id, 1)
    assert query(store_url, "SELECT type FROM events") == [("smoke.reading",)]
    [entry] = store.quarantined()
    assert "conflict" in entry.reason and entry.gateway_from_topic == "gw-a"


def test_one_refused_event_fails_neither_its_payload_nor_the_others(
        store: Store, store_url: str) -> None:
    refuse_events_of(store_url, "smoke-bad")
    epoch, other = new_epoch(), new_epoch()
    bad = reading("gw-a", epoch, 2, device="smoke-bad")
    results = store.ingest_many([
        Payload(GW_B, rows([reading("gw-b", other, 1)], "gw-b"), []),
        Payload(GW_A, rows([reading("gw-a", epoch, 1), bad, reading("gw-a", epoch, 3)]), []),
        Payload(GW_B, rows([reading("gw-b", other, 2)], "gw-b"), [])])
    assert [(r.inserted, r.quarantined, r.duplicates) for r in results] == [
        (1, 0, 0), (2, 1, 0), (1, 0, 0)]
    [refused] = results[1].diverted
    assert (refused.event_id, refused.seq) == (bad.id, 2)
    assert "the store refused it" in refused.reason
    assert query(store_url, "SELECT COUNT(*) FROM events") == [(4,)]
    [entry] = store.quarantined()
    assert (entry.gateway_from_topic, entry.event_id) == ("gw-a", bad.id)
    streams = {s.gateway: (s.high_seq, s.received) for s in store.stats().streams}
    assert streams == {"gw-a": (3, 2), "gw-b": (2, 2)}


def test_quarantine_is_written_under_each_payloads_origin(store: Store) -> None:
    epoch = new_epoch()
    bad = Origin("cd/v1/not/a/topic", None)
    results = store.ingest_many([
        Payload(GW_A, rows([reading("gw-a", epoch, 1)]), [Rejected("a: bad", b"a")]),
        Payload(bad, [], [Rejected("topic: bad", b"t")]),
        Payload(GW_B, [], [Rejected("b: bad", b"b1", "id-1", epoch, 1),
                           Rejected("b: worse", b"b2", "id-2", epoch, 2)])])
    assert [(r.inserted, r.quarantined) for r in results] == [(1, 1), (0, 1), (0, 2)]
    entries = {(e.topic, e.gateway_from_topic, e.raw) for e in store.quarantined()}
    assert entries == {(GW_A.topic, "gw-a", b"a"), (bad.topic, None, b"t"),
                       (GW_B.topic, "gw-b", b"b1"), (GW_B.topic, "gw-b", b"b2")}


def test_a_group_the_store_fails_leaves_nothing(store: Store, store_url: str) -> None:
    error = refuse_quarantine(store_url)
    a, b = new_epoch(), new_epoch()
    with pytest.raises(error):  # the last payload's quarantine fails the whole group
        store.ingest_many([Payload(GW_A, rows([reading("gw-a", a, 1)]), []),
                           Payload(GW_B, rows([reading("gw-b", b, 1)], "gw-b"), []),
                           Payload(GW_A, rows([reading("gw-a", a, 2)]), [Rejected("x", b"x")])])
    stats = store.stats()
    assert (stats.events, stats.quarantined, stats.streams) == (0, 0, [])
