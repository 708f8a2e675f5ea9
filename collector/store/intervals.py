"""Interval arithmetic for gaps: split missing seq ranges by the ranges a data_loss explained."""

from __future__ import annotations

from collections.abc import Iterable

#: (from_seq, to_seq, explained, reason)
Piece = tuple[int, int, bool, str | None]


def split_missing(missing: Iterable[tuple[int, int]],
                  explained: Iterable[tuple[int, int, str | None]]) -> list[Piece]:
    """Cut each inclusive missing range into explained and unexplained pieces, in order."""
    known = sorted(explained)
    out: list[Piece] = []
    for first, last in sorted(missing):
        cursor = first
        for lo, hi, reason in known:
            if hi < cursor:
                continue
            if lo > last:
                break
            if lo > cursor:
                out.append((cursor, lo - 1, False, None))
            end = min(hi, last)
            out.append((max(cursor, lo), end, True, reason))
            cursor = end + 1
            if cursor > last:
                break
        if cursor <= last:
            out.append((cursor, last, False, None))
    return out
