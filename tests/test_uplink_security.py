"""Uplink over TLS with username/password, retained status with a last will, bad credentials.

A real Mosquitto with a TLS listener (certificates made by openssl for 127.0.0.1) and a
password file (mosquitto_passwd); agent and collector run as processes.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest

from tests.harness import (
    COMMUNITY,
    DISTRICT,
    agent,
    collector,
    collector_yaml,
    gateway_yaml,
    query,
    sim_devices,
    wait_for,
    write_yaml,
)
from tests.peers import Mosquitto, require_binary

pytestmark = pytest.mark.slow

GW_SECRET = "gw-Secret-7f3a9c"
COLLECTOR_SECRET = "col-Secret-21bd04"


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    openssl = require_binary("openssl")
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr",
                                                  "srv.pem"))
    run = lambda *a: subprocess.run([openssl, *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
        "-out", str(csr))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    for p in (ca, key, cert):
        p.chmod(0o644)
    return ca, cert, key


@pytest.fixture
def tls_broker(tmp_path: Path) -> Mosquitto:
    passwd = require_binary("mosquitto_passwd")
    ca, cert, key = make_certs(tmp_path / "certs")
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), "gw-tls", GW_SECRET], check=True)
    subprocess.run([passwd, "-b", str(pwfile), "collector", COLLECTOR_SECRET], check=True)
    pwfile.chmod(0o644)
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.listener_conf = (f"listener {broker.port} 127.0.0.1\n"
                            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                            f"allow_anonymous false\npassword_file {pwfile}\n")
    broker.start()
    yield broker
    broker.stop()


async def status_of(broker: Mosquitto, ca: Path, gateway: str) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    topic = f"cd/v1/{DISTRICT}/{COMMUNITY}/{gateway}/status"
    async with aiomqtt.Client("127.0.0.1", broker.port, username="collector",
                              password=COLLECTOR_SECRET, tls_context=ctx) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                return bytes(message.payload).decode()  # type: ignore[arg-type]
    raise AssertionError("no retained status")


def test_tls_and_password_uplink_with_status_and_last_will(tmp_path: Path,
                                                           tls_broker: Mosquitto) -> None:
    ca = tmp_path / "certs" / "ca.pem"
    (tmp_path / "gw.pw").write_text(GW_SECRET + "\n")
    (tmp_path / "col.pw").write_text(COLLECTOR_SECRET + "\n")
    url = f"mqtts://127.0.0.1:{tls_broker.port}"
    store, outbox = tmp_path / "district.db", tmp_path / "outbox.db"
    ccfg = collector_yaml(url, store)
    ccfg["broker"].update(username="collector", password={"file": str(tmp_path / "col.pw")},
                          tls={"ca_file": str(ca)})
    acfg = gateway_yaml("gw-tls", url, outbox, devices=sim_devices(2, period_s=0.1),
                        uplink={"username": "gw-tls", "password": {"file": str(tmp_path / "gw.pw")},
                                "tls": {"ca_file": str(ca)}})
    col = collector(write_yaml(tmp_path / "c.yaml", ccfg), tmp_path / "collector.log").start()
    ag = agent(write_yaml(tmp_path / "g.yaml", acfg), tmp_path / "agent.log").start()
    try:
        wait_for(lambda: query(store, "SELECT COUNT(*) FROM events WHERE gateway='gw-tls'")
                 and query(store, "SELECT COUNT(*) FROM events WHERE gateway='gw-tls'")[0][0] > 10,
                 30, "events over TLS")
        assert asyncio.run(status_of(tls_broker, ca, "gw-tls")) == "online"
        assert ag.stop() == 0                                  # graceful: says offline itself
        assert asyncio.run(status_of(tls_broker, ca, "gw-tls")) == "offline"
        ag.start()
        wait_for(lambda: asyncio.run(status_of(tls_broker, ca, "gw-tls")) == "online", 20,
                 "online again")
        ag.kill()                                              # no goodbye: the will speaks
        wait_for(lambda: asyncio.run(status_of(tls_broker, ca, "gw-tls")) == "offline", 20,
                 "the last will")
    finally:
        ag.kill()
        col.stop()
    for log in ("agent.log", "collector.log"):
        text = (tmp_path / log).read_text()
        assert GW_SECRET not in text and COLLECTOR_SECRET not in text


def test_wrong_password_keeps_retrying_and_never_logs_it(tmp_path: Path,
                                                         tls_broker: Mosquitto) -> None:
    ca = tmp_path / "certs" / "ca.pem"
    wrong = "not-the-Password-99"
    (tmp_path / "gw.pw").write_text(wrong)
    url = f"mqtts://127.0.0.1:{tls_broker.port}"
    acfg = gateway_yaml("gw-tls", url, tmp_path / "outbox.db",
                        devices=sim_devices(1, period_s=0.2),
                        uplink={"username": "gw-tls", "password": {"file": str(tmp_path / "gw.pw")},
                                "tls": {"ca_file": str(ca)}})
    ag = agent(write_yaml(tmp_path / "g.yaml", acfg), tmp_path / "agent.log").start()
    try:
        wait_for(lambda: [e for e in ag.log_events() if e.get("event") == "uplink_reconnecting"],
                 20, "reconnect attempts")
        time.sleep(1)
        assert ag.alive()
    finally:
        assert ag.stop() == 0
    text = (tmp_path / "agent.log").read_text()
    assert wrong not in text
    errors = [e.get("error", "") for e in ag.log_events()
              if e.get("event") == "uplink_reconnecting"]
    assert any("authoriz" in err.lower() or "password" in err.lower() for err in errors), errors
