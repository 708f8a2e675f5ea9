"""The compiled extractor gives exactly what `planner.extract` gives, errors included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import DecodeError, Value
from drivers.modbus.extractor import compile_request
from drivers.modbus.planner import ReadRequest, extract, plan
from drivers.modbus.points import Order, Point, PointType, Table
from drivers.modbus.profile import load_profile

DATA = Path(__file__).parent / "data" / "modbus"
SHIPPED = Path(__file__).parent.parent / "configs" / "profiles"


def comparable(out: dict[str, Value | DecodeError]) -> list[tuple[str, Any]]:
    """Results with errors as (type, message): exceptions never compare equal."""
    return [(name, ("error", str(v)) if isinstance(v, DecodeError) else (type(v), v))
            for name, v in out.items()]


def same(request: ReadRequest, values: list[Any]) -> None:
    assert comparable(compile_request(request)(values)) == comparable(extract(request, values))


def requests_of(profile: Path) -> list[ReadRequest]:
    return plan(list(load_profile(profile).points))


def test_scattered_map_and_shipped_profiles_on_random_responses() -> None:
    import random

    rng = random.Random(7)
    profiles = [DATA / "scattered-20.yaml", *sorted(SHIPPED.glob("*.yaml"))]
    for profile in profiles:
        for request in requests_of(profile):
            for _ in range(300):
                if request.table.is_bits:
                    values: list[Any] = [rng.random() < 0.5 for _ in range(request.count)]
                else:
                    values = [rng.choice((0, 0xFFFF, 0x7FC0, 0x7F80, rng.randrange(65536)))
                              for _ in range(request.count)]
                same(request, values)


WIDE = (PointType.INT32, PointType.UINT32, PointType.FLOAT32, PointType.FLOAT64)
POINT_TYPES = [PointType.INT16, PointType.UINT16, PointType.INT32, PointType.UINT32,
               PointType.FLOAT32, PointType.FLOAT64, PointType.BIT, PointType.STRING]


@st.composite
def register_requests(draw: st.DrawFn) -> ReadRequest:
    points: list[Point] = []
    address = 0
    for i in range(draw(st.integers(1, 6))):
        type_ = draw(st.sampled_from(POINT_TYPES))
        spec: dict[str, Any] = {"name": f"p{i}", "table": "holding_register",
                                "address": address, "type": type_.value}
        if type_ is not PointType.BIT:
            spec["byte_order"] = draw(st.sampled_from(list(Order))).value
        if type_ in WIDE:
            spec["word_order"] = draw(st.sampled_from(list(Order))).value
        if type_ is PointType.BIT:
            spec["bit"] = draw(st.integers(0, 15))
        if type_ is PointType.STRING:
            spec["length"] = draw(st.integers(1, 3))
        if draw(st.booleans()) and type_ not in (PointType.BIT, PointType.STRING):
            spec["scale"] = draw(st.sampled_from([0.1, 0.01, 2.0, 10.0, -1.0]))
            spec["offset"] = draw(st.sampled_from([0.0, 1.0, -40.0, 0.5]))
        point = Point.model_validate(spec)
        points.append(point)
        address = point.last_address + 1 + draw(st.integers(0, 2))
    (request,) = plan(points)
    return request


register_values = st.one_of(st.integers(0, 0xFFFF),
                            st.sampled_from([0x7FC0, 0x7F80, 0xFF80, 0x0000, 0xFFFF]))


@settings(max_examples=400, deadline=None)
@given(register_requests(), st.data())
def test_any_register_request_on_any_response(request: ReadRequest, data: st.DataObject
                                              ) -> None:
    n = data.draw(st.integers(max(0, request.count - 2), request.count), label="length")
    values = data.draw(st.lists(register_values, min_size=n, max_size=n), label="registers")
    same(request, values)


@settings(max_examples=100, deadline=None)
@given(register_requests(), st.data())
def test_garbage_registers_take_the_general_path(request: ReadRequest, data: st.DataObject
                                                 ) -> None:
    values: list[Any] = data.draw(st.lists(
        st.one_of(st.integers(-5, 70000), st.booleans()),
        min_size=request.count, max_size=request.count))
    same(request, values)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.data())
def test_coil_requests(count: int, data: st.DataObject) -> None:
    points = [Point.model_validate({"name": f"c{i}", "table": "coil", "address": i,
                                    "type": "bool"}) for i in range(count)]
    (request,) = plan(points)
    assert request.table is Table.COIL
    values = data.draw(st.lists(st.one_of(st.booleans(), st.integers(-1, 2)),
                                min_size=count, max_size=count + 7))
    same(request, values)


def test_a_nan_point_is_an_error_and_the_others_are_decoded() -> None:
    request = plan([Point.model_validate(p) for p in (
        {"name": "good", "table": "holding_register", "address": 0, "type": "uint16"},
        {"name": "nan", "table": "holding_register", "address": 1, "type": "float32"},
        {"name": "after", "table": "holding_register", "address": 3, "type": "int16"})])[0]
    out = compile_request(request)([42, 0x7FC0, 0x0000, 0xFFFF])
    assert out["good"] == 42 and out["after"] == -1
    assert isinstance(out["nan"], DecodeError) and "NaN" in str(out["nan"])
