"""The Modbus read planner: data-driven cases, properties, and decoding a response."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import DecodeError, encode
from drivers.modbus.planner import (
    DEFAULT_LINK,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    DeviceLimits,
    Limits,
    LinkCost,
    PlanError,
    ReadRequest,
    extract,
    gap_fill,
    oversized,
    plan,
    rtu_request_overhead_s,
)
from drivers.modbus.points import Point, PointType, Table
from drivers.modbus.profile import load_profile

DATA = Path(__file__).parent / "data" / "modbus"
CASES: list[dict[str, Any]] = yaml.safe_load((DATA / "planner_cases.yaml").read_text("utf-8"))
SCATTERED = DATA / "scattered-20.yaml"


def _points(case: dict[str, Any]) -> list[Point]:
    if "profile" in case:
        return list(load_profile(DATA / case["profile"]).points)
    points = []
    for index, spec in enumerate(case["points"]):
        values = {"name": f"p{index}", "table": "holding_register", "type": "uint16", **spec}
        points.append(Point.model_validate(values))
    return points


def _shape(requests: list[ReadRequest], with_names: bool) -> list[list[Any]]:
    out: list[list[Any]] = []
    for r in requests:
        row: list[Any] = [r.table.value, r.start, r.count]
        if with_names:
            row.append([p.name for p in r.points])
        out.append(row)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_planner_case(case: dict[str, Any]) -> None:
    points = _points(case)
    limits = Limits(**case.get("limits", {}))
    link = LinkCost(**case["link"]) if "link" in case else DEFAULT_LINK
    if "error" in case:
        with pytest.raises(PlanError) as err:
            plan(points, limits, link)
        assert case["error"] in str(err.value)
        return
    requests = plan(points, limits, link)
    if "expect_count" in case:
        assert len(requests) == case["expect_count"]
    for expected, got in zip(case.get("expect", []), requests, strict=False):
        assert _shape([got], len(expected) == 4)[0] == expected, str(got)
    if "expect" in case:
        assert len(requests) == len(case["expect"]), [str(r) for r in requests]
    _check_invariants(points, limits, requests, link)


def test_figure_scattered_map_planner_vs_one_request_per_point() -> None:
    points = list(load_profile(SCATTERED).points)
    assert len(points) == 20
    assert min(p.address for p in points) == 0
    assert max(p.last_address for p in points) == 54
    assert len(plan(points)) == 1
    assert len(plan(points, Limits(single_point_requests=True))) == 20


def test_plan_is_deterministic_under_shuffling() -> None:
    points = list(load_profile(SCATTERED).points)
    expected = plan(points, Limits(gap_fill_registers=4))
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(points)
        assert plan(points, Limits(gap_fill_registers=4)) == expected


@pytest.mark.parametrize(("link", "registers", "bits"), [
    # TCP: a request is a round trip; merge up to the protocol maxima
    (LinkCost.tcp(), 125, 2000),
    # RTU <= 19,200 baud: 8 + 5 characters of frames and 2 x 3.5 of silence = 20 characters,
    # whatever the character's bits: a hole of 10 registers (20 characters) is not cheaper
    (LinkCost.rtu(9600), 9, 159),
    (LinkCost.rtu(9600, bits_per_char=10), 9, 159),
    (LinkCost.rtu(1200), 9, 159),
    (LinkCost.rtu(19200), 9, 159),
    # above 19,200 the silences are a fixed 1.75 ms: worth more characters the faster
    (LinkCost.rtu(38400, bits_per_char=10), 13, 211),
    (LinkCost.rtu(115200, bits_per_char=10), 26, 426),
    # a configured pause between requests is wire time a merge saves too (10 ms at 9600
    # 8E1: 8.7 characters)
    (LinkCost.rtu(9600, pause_s=0.01), 14, 229),
    # never beyond the protocol maxima
    (LinkCost.rtu(9600, pause_s=10.0), 125, 2000),
])
def test_gap_fill_follows_the_cost_of_a_request(link: LinkCost, registers: int,
                                                bits: int) -> None:
    assert gap_fill(link) == (registers, bits)
    # the cost model: the fill's wire time is under a request's, one more is not
    overhead = rtu_request_overhead_s(link) if link.kind == "rtu" else None
    if overhead is not None and registers < MAX_READ_REGISTERS:
        per_register = 2 * link.char_s
        assert registers * per_register < overhead <= (registers + 1) * per_register * 1.000001


def test_oversized_lists_every_point_that_cannot_fit() -> None:
    points = [_pt("a", 0, PointType.STRING, length=40), _pt("b", 100, PointType.FLOAT64),
              _pt("c", 200)]
    found = oversized(points, Limits(max_registers=3))
    assert [p.name for p, _ in found] == ["a", "b"]
    assert oversized(points) == []


# --------------------------------------------------------------------------- limits


def test_device_limits_may_only_lower_the_profile_limits() -> None:
    profile = Limits(max_registers=64, gap_fill_registers=8)
    lowered = profile.lowered(DeviceLimits(max_registers=16, single_point_requests=True))
    assert lowered == Limits(max_registers=16, gap_fill_registers=8, single_point_requests=True)
    assert profile.lowered(None) is profile
    with pytest.raises(ValueError, match="max_registers 100 is more than the profile's 64"):
        profile.lowered(DeviceLimits(max_registers=100))
    with pytest.raises(ValueError, match="gap_fill_registers 9 is more"):
        profile.lowered(DeviceLimits(gap_fill_registers=9))
    with pytest.raises(ValueError, match="cannot be turned off"):
        Limits(single_point_requests=True).lowered(DeviceLimits(single_point_requests=False))


def test_limits_cannot_exceed_the_protocol() -> None:
    with pytest.raises(ValueError):
        Limits(max_registers=MAX_READ_REGISTERS + 1)
    with pytest.raises(ValueError):
        Limits(max_bits=MAX_READ_BITS + 1)
    with pytest.raises(ValueError):
        Limits(max_registers=0)


# --------------------------------------------------------------------------- extract


def _image(points: list[Point], values: dict[str, Any]) -> dict[int, int]:
    """A register image holding every point's value, encoded as the device would."""
    regs: dict[int, int] = {}
    for p in points:
        if p.type is PointType.BIT:
            assert p.bit is not None
            regs[p.address] = regs.get(p.address, 0) | (int(bool(values[p.name])) << p.bit)
            continue
        for i, word in enumerate(encode(p, values[p.name])):
            regs[p.address + i] = int(word)
    return regs


SCATTERED_VALUES: dict[str, Any] = {
    "a0": 65535, "a1": -12.5, "a2": 4_000_000_000, "a3": 1234.5678,
    "b0": -7, "b1": 0.231, "b2": "GATE-01", "b3": -32768,
    "c0": True, "c1": 7, "c2": 1.1, "c3": 101.325,
    "d0": 2.75, "d1": 123456789, "d2": 99, "d3": "ABC",
    "e0": 0, "e1": -2_000_000_000, "e2": -0.5, "e3": 1,
}


def test_extract_decodes_every_point_of_the_scattered_map() -> None:
    points = list(load_profile(SCATTERED).points)
    image = _image(points, SCATTERED_VALUES)
    (request,) = plan(points)
    registers = [image.get(request.start + i, 0) for i in range(request.count)]
    assert extract(request, registers) == SCATTERED_VALUES


def test_extract_a_bad_point_does_not_hide_the_others() -> None:
    points = [_pt("good", 0), _pt("nan", 1, PointType.FLOAT32), _pt("after", 3, PointType.INT16)]
    (request,) = plan(points)
    out = extract(request, [42, 0x7FC0, 0x0000, 0xFFFF])
    assert out["good"] == 42 and out["after"] == -1
    assert isinstance(out["nan"], DecodeError)
    assert "point `nan`" in str(out["nan"]) and "NaN" in str(out["nan"])


def test_extract_short_response_is_an_error_for_the_missing_points_only() -> None:
    points = [_pt("a", 0), _pt("b", 1, PointType.UINT32)]
    (request,) = plan(points)
    out = extract(request, [5, 6])
    assert out["a"] == 5
    assert isinstance(out["b"], DecodeError)
    assert "holds 2 registers, the request asked for 3" in str(out["b"])


def test_extract_bits_padded_to_a_byte() -> None:
    points = [Point(name=f"c{i}", table=Table.COIL, address=10 + 2 * i, type=PointType.BOOL)
              for i in range(3)]
    (request,) = plan(points)
    assert (request.start, request.count, request.function_code) == (10, 5, 1)
    bits = [True, False, False, False, True, False, False, False]  # pymodbus pads to 8
    assert extract(request, bits) == {"c0": True, "c1": False, "c2": True}


def test_read_request_text() -> None:
    (request,) = plan([_pt("x", 3), _pt("y", 4)])
    assert str(request) == "FC3 holding_register 3..4 (2): x, y"
    assert request.last_address == 4


# --------------------------------------------------------------------------- properties


def _pt(name: str, address: int, type_: PointType = PointType.UINT16,
        table: Table = Table.HOLDING_REGISTER, **extra: Any) -> Point:
    return Point(name=name, table=table, address=address, type=type_, **extra)


_REGISTER_TYPES = [PointType.UINT16, PointType.INT32, PointType.FLOAT32, PointType.FLOAT64,
                   PointType.STRING, PointType.BIT]


@st.composite
def _layouts(draw: st.DrawFn) -> list[Point]:
    """Non-overlapping points over the four tables; bit points may share a register."""
    points: list[Point] = []
    for table in Table:
        address = draw(st.integers(0, 300))
        for _ in range(draw(st.integers(0, 12))):
            name = f"p{len(points)}"
            if table.is_bits:
                points.append(_pt(name, address, PointType.BOOL, table))
                address += 1
            else:
                type_ = draw(st.sampled_from(_REGISTER_TYPES))
                if type_ is PointType.BIT:
                    bits = draw(st.sets(st.integers(0, 15), min_size=1, max_size=3))
                    for n, bit in enumerate(sorted(bits)):
                        points.append(_pt(f"{name}_{n}", address, type_, table, bit=bit))
                    address += 1
                elif type_ is PointType.STRING:
                    length = draw(st.integers(1, 8))
                    points.append(_pt(name, address, type_, table, length=length))
                    address += length
                else:
                    points.append(_pt(name, address, type_, table))
                    address += points[-1].registers
            address += draw(st.integers(0, 40))
    return points


_limits = st.builds(
    Limits,
    max_registers=st.integers(8, MAX_READ_REGISTERS),
    max_bits=st.integers(1, 64),
    gap_fill_registers=st.integers(0, 30),
    gap_fill_bits=st.integers(0, 40),
    single_point_requests=st.booleans(),
)


def _check_invariants(points: list[Point], limits: Limits, requests: list[ReadRequest],
                      link: LinkCost = DEFAULT_LINK) -> None:
    covered = [p.name for r in requests for p in r.points]
    assert sorted(covered) == sorted(p.name for p in points), "every point exactly once"
    assert len(requests) <= len(points)
    by_table: dict[Table, list[ReadRequest]] = {}
    for r in requests:
        most, gap = limits.for_table(r.table, link)
        assert 1 <= r.count <= most
        assert r.start >= 0 and r.last_address <= 65535
        assert r.points, "no empty request"
        assert r.start == min(p.address for p in r.points)
        assert r.last_address == max(p.last_address for p in r.points)
        for p in r.points:
            assert p.table is r.table
            assert r.start <= p.address and p.last_address <= r.last_address
        if limits.single_point_requests:
            assert {(p.address, p.registers) for p in r.points} == {(r.start, r.count)}
        else:
            end = r.start
            for p in sorted(r.points, key=lambda q: q.address):
                assert p.address - end <= gap, "a hole larger than the gap fill"
                end = max(end, p.address + p.registers)
        by_table.setdefault(r.table, []).append(r)
    order = [r.function_code for r in requests]
    assert order == sorted(order)
    for rs in by_table.values():
        for a, b in itertools.pairwise(rs):
            assert a.last_address < b.start, "requests of one table are ordered, disjoint"


def _optimum(points: list[Point], limits: Limits) -> int:
    """The fewest requests, by dynamic programming over contiguous groups per table."""
    total = 0
    for table in Table:
        pts = sorted((p for p in points if p.table is table),
                     key=lambda p: (p.address, p.last_address))
        if not pts:
            continue
        if limits.single_point_requests:
            total += len({(p.address, p.registers) for p in pts})
            continue
        most, gap = limits.for_table(table)
        best = [0] + [math.inf] * len(pts)
        for j in range(1, len(pts) + 1):
            for i in range(j - 1, -1, -1):  # group pts[i:j]
                group = pts[i:j]
                start = group[0].address
                end = max(p.address + p.registers for p in group)
                holes_ok = all(b.address - max(q.address + q.registers for q in group[: k + 1])
                               <= gap for k, b in enumerate(group[1:]))
                if end - start > most:
                    break
                if holes_ok:
                    best[j] = min(best[j], best[i] + 1)
        total += int(best[-1])
    return total


@settings(max_examples=300, deadline=None)
@given(points=_layouts(), limits=_limits)
def test_property_plan_covers_each_point_once_within_limits(points: list[Point],
                                                            limits: Limits) -> None:
    requests = plan(points, limits)
    _check_invariants(points, limits, requests)
    assert len(requests) == _optimum(points, limits), "greedy is optimal"
    reversed_plan = plan(list(reversed(points)), limits)
    assert reversed_plan == requests, "deterministic whatever the input order"
    no_fill = limits.model_copy(update={"gap_fill_registers": 0, "gap_fill_bits": 0})
    assert len(requests) <= len(plan(points, no_fill))
