"""The Modbus TCP link against quirky peers (`QuirkyServer`, MBAP by hand): a gateway that
does not echo the transaction id, one that closes the connection after every reply, and
replies that do not answer the request (the status page's `corrupt` reason)."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.points import Table
from drivers.modbus.tcp_link import TcpLink
from drivers.modbus.transport import ModbusConnectionError, ModbusProtocolError
from edge_agent.sdk.api import DeviceState
from edge_agent.sdk.testing import running
from edge_agent.status.reasons import reason_code
from tests.harness import wait_until
from tests.modbus_servers import QuirkyServer, RecordingSink, tcp_device

pytestmark = pytest.mark.timeout(60)



async def test_a_reply_with_another_transaction_id_is_a_protocol_error_naming_both() -> None:
    async with QuirkyServer("wrong_transaction") as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        with pytest.raises(ModbusProtocolError) as caught:
            await link.read(Table.HOLDING_REGISTER, 0, 2, 1)
        link.close()
    message = str(caught.value)
    assert "no reply with transaction id 1 within 0.2s, only one with transaction id " \
           f"{1 ^ 0x5555}" in message, message
    assert "does not echo the transaction id" in message
    assert reason_code(message) == "corrupt", "the page says garbled, not 'no answer'"
    assert server.replies == 1


async def test_a_gateway_that_closes_after_every_reply_polls_fine() -> None:
    """Two requests per poll (smoke-detector: FC2, FC4): the second goes out on the
    connection the gateway is closing and is sent again on a fresh one."""
    async with QuirkyServer("close_after_reply") as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        assert await link.read(Table.DISCRETE_INPUT, 0, 2, 1) == [False, False]
        assert await link.read(Table.INPUT_REGISTER, 0, 4, 1) == [0, 0, 0, 0]
        assert (server.connections, server.requests, server.replies) == (2, 3, 2)
        link.close()

        sink = RecordingSink()
        driver = ModbusDriver([tcp_device("smoke-gw", "smoke-detector", server.port)], sink)
        async with running(driver):
            await wait_until(lambda: len(sink.of("smoke.reading")) >= 1
                             and server.replies >= 2 + 8, 5, "four good polls")
    assert sink.current.get("smoke-gw") is DeviceState.ONLINE
    assert sink.types().count("device.offline") == 0, sink.states


async def test_a_device_that_is_really_down_is_asked_once_more_only() -> None:
    """One reply, then every connection is closed unanswered: the request that met the
    closing connection is retried once; a fresh connection that fails is no reason to
    retry (no exchange ever completed on it), the poller's back-off takes over."""
    async with QuirkyServer("gone_after_reply") as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        await link.read(Table.DISCRETE_INPUT, 0, 2, 1)
        with pytest.raises(ModbusConnectionError, match=r"input_register 0\.\.3: connection lost"):
            await link.read(Table.INPUT_REGISTER, 0, 4, 1)
        assert (server.connections, server.requests) == (2, 3), "one retry"
        with pytest.raises(ModbusConnectionError, match="connection lost"):
            await link.read(Table.INPUT_REGISTER, 0, 4, 1)
        assert (server.connections, server.requests) == (3, 4), "no retry on a new connection"
        link.close()


@pytest.mark.parametrize(("quirk", "table", "says"), [
    ("other_unit", Table.HOLDING_REGISTER, "garbled reply: the reply comes from unit 8"),
    ("other_function", Table.DISCRETE_INPUT, "garbled reply: the reply is for function 3, "
                                             "not 2"),
    ("bad_byte_count", Table.INPUT_REGISTER, "garbled reply: the byte count says 200, the "
                                             "reply holds 1"),
])
async def test_a_reply_that_does_not_answer_the_request_is_a_garbled_reply(
        quirk: Any, table: Table, says: str) -> None:
    async with QuirkyServer(quirk) as server:
        link = TcpLink("127.0.0.1", server.port, 0.2)
        with pytest.raises(ModbusProtocolError) as caught:
            await link.read(table, 0, 2, 1)
        assert not link.connected, "a garbled connection is dropped"
    assert str(caught.value).endswith(says), caught.value
    assert reason_code(str(caught.value)) == "corrupt"
