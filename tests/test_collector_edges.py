"""The collector at the edges of its resources, run as a real process (managed Mosquitto):
a flood from one gateway holds memory at the configured bound, nothing acked is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from collector.store import open_store
from tests.peers import free_port, require_binary, wait_port
from tests.test_collector_cli import publish_and_wait, start, write_config
from tests.test_collector_support import batch, new_epoch, reading

MIB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def wait_log(log: Path, text: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def flood(port: int, count: int, size: int) -> None:
    """As gw-a: `count` QoS 1 payloads of `size` bytes, as fast as the broker takes them."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-a-flood",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("gw-a", "secret-a")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    body = b'{"x":"' + b"a" * size + b'"}'
    infos = [client.publish("cd/v1/371312/371312001001/gw-a/events", body, qos=1)
             for _ in range(count)]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def test_a_flood_from_one_gateway_holds_memory_at_the_bound(tmp_path: Path) -> None:
    """1,200 x 300 KB (360 MB) at a collector whose inbox holds 16 MiB: its peak RSS stays
    far below the flood (it was ~ the flood's size: aiomqtt's queue was unbounded), and
    the events acked before and after it are all stored."""
    require_binary("mosquitto")
    port = free_port()
    config = write_config(tmp_path, port, ingest={"max_queued_bytes": "16MiB"})
    log = tmp_path / "collector.log"
    proc = start(config, log)
    epoch = new_epoch()
    try:
        wait_port(port)
        wait_log(log, "broker_connected")
        asyncio.run(publish_and_wait(port, [batch([reading("gw-a", epoch, 1)])], {1}))
        flood(port, 1200, 300_000)
        asyncio.run(publish_and_wait(port, [batch([reading("gw-a", epoch, 2)])], {2}))
        peak = peak_rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log.read_text()[-3000:]
    print("peak RSS MiB", peak / MIB)
    assert peak < 200 * MIB, f"peak RSS {peak / MIB:.0f} MiB"
    store = open_store(f"sqlite:///{tmp_path / 'var' / 'district.db'}")
    try:
        assert store.stats().events == 2
    finally:
        store.close()
