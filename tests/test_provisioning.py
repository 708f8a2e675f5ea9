"""`edge-collector provision` against a real Mosquitto started with the generated files.

The must-hold: a gateway's generated credential publishes only its own events and status
under its own codes (not another gateway's topics, not its own id under another
community's or district's codes: a subscriber sees nothing of those), reads only its own
acks; a revoked gateway and a wrong password cannot connect. Two provisions at once lose
nothing. Bad options are exit 2 naming the option.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt import ProtocolVersion
from click.testing import CliRunner

from collector.cli import main
from collector.mosquitto_files import mosquitto_hash
from collector.provisioning.plan import passwd_hashes
from collector.registry import GatewaysFile
from edge_agent.contract.settings import load_model
from edge_agent.contract.topics import GatewayTopics
from tests.peers import Mosquitto, free_port, require_binary
from tests.test_managed_broker import connect_packet, raw_connect

ROOT = Path(__file__).resolve().parent.parent
DISTRICT, STREET = "371312", "371312001"
COMM_A, COMM_B = "371312001001", "371312001002"
COLLECTOR_PW = "collector-pw-5e1"
REGISTRY_HEAD = "# our district's gateways (kept by provision)\ngateways:\n"


@dataclass
class District:
    tmp: Path
    config: Path
    registry: Path
    dir: Path
    out: Path

    def provision(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["provision", *args, "--config", str(self.config),
                                           "--out", str(self.out)])
        return result.exit_code, result.output

    def password(self, gateway: str) -> str:
        return (self.out / f"{gateway}.mqtt-password").read_text().strip()


@pytest.fixture
def district(tmp_path: Path) -> District:
    registry = tmp_path / "gateways.yaml"
    registry.write_text(REGISTRY_HEAD + '  gw-old: {district: "371312", street: "s9", '
                        'community: "c9"}   # installed by hand in 2024\n')
    prov = tmp_path / "prov"
    prov.mkdir()
    # a collector account added with mosquitto_passwd: provision keeps its line
    (prov / "passwd").write_text(f"collector-c1:{mosquitto_hash(COLLECTOR_PW)}\n")
    config = tmp_path / "collector.yaml"
    config.write_text(textwrap.dedent(f"""\
        collector: {{id: c1}}
        store: sqlite:///{tmp_path}/district.db
        broker: {{url: "mqtt://127.0.0.1:1883", username: collector-c1}}
        gateways: {{file: {registry}}}
        provisioning:
          dir: {prov}
          broker_url: mqtts://mqtt.district.example:8883
          collectors: [{{username: collector-c1, collector_id: c1}}]
        """))
    return District(tmp_path, config, registry, prov, tmp_path / "box")


def test_provision_writes_the_box_password_the_hash_the_acl_and_the_registry(
        district: District) -> None:
    code, out = district.provision("gw-a", "--district", DISTRICT, "--street", STREET,
                                   "--community", COMM_A)
    assert code == 0, out
    password = district.password("gw-a")
    assert len(password) >= 40
    assert (district.out / "gw-a.mqtt-password").stat().st_mode & 0o777 == 0o600
    assert 'community: "371312001001"' in out and "username: gw-a" in out
    assert "ca_file:" in out and "kill -HUP" in out
    hashes = passwd_hashes((district.dir / "passwd").read_text())
    assert set(hashes) == {"collector-c1", "gw-a"} and hashes["gw-a"].startswith("$7$")
    for name in ("passwd", "acl"):
        assert password not in (district.dir / name).read_text()
    acl = (district.dir / "acl").read_text()
    assert f"topic write cd/v1/{DISTRICT}/{COMM_A}/gw-a/events" in acl
    assert "user gw-old" not in acl  # registered by hand, no password here: no rights
    assert "pattern write" not in acl and "/+/+/gw-a/" not in acl
    text = district.registry.read_text()
    assert text.startswith(REGISTRY_HEAD) and "# installed by hand in 2024" in text
    places = load_model(district.registry, GatewaysFile).gateways
    assert places["gw-a"].community == COMM_A and "gw-old" in places

    code, out = district.provision("gw-a", "--district", DISTRICT, "--street", STREET,
                                   "--community", COMM_A)
    assert code == 0 and "password is unchanged" in out
    assert district.password("gw-a") == password
    code, out = district.provision("--list")
    assert code == 0
    assert "gw-a\t371312\t371312001\t371312001001\tprovisioned" in out
    assert "gw-old\t371312\ts9\tc9\tregistered only" in out


@pytest.mark.parametrize(("args", "named"), [
    (["gw-x", "--district", "37131", "--street", STREET, "--community", COMM_A], "--district"),
    (["gw-x", "--district", "3713120", "--street", STREET, "--community", COMM_A],
     "--district"),
    (["gw-x", "--district", DISTRICT, "--street", "a/b", "--community", COMM_A], "--street"),
    (["gw-x", "--district", DISTRICT, "--street", STREET, "--community", "c+1"],
     "--community"),
    (["gw-x", "--district", DISTRICT, "--street", STREET, "--community", "#"], "--community"),
    (["gw/x", "--district", DISTRICT, "--street", STREET, "--community", COMM_A], "GATEWAY"),
    (["gw+", "--district", DISTRICT, "--street", STREET, "--community", COMM_A], "GATEWAY"),
    (["gw#", "--district", DISTRICT, "--street", STREET, "--community", COMM_A], "GATEWAY"),
    (["gw-x\n", "--district", DISTRICT, "--street", STREET, "--community", COMM_A], "GATEWAY"),
    (["gw-x", "--district", DISTRICT + "\n", "--street", STREET, "--community", COMM_A],
     "--district"),
    (["gw-x", "--district", DISTRICT, "--street", STREET], "--community"),
    (["gw-old", "--district", DISTRICT, "--street", STREET, "--community", COMM_A],
     "--move"),
    (["--revoke", "gw-nobody"], "not provisioned"),
    (["--revoke", "collector-c1"], "not provisioned"),
    (["collector-c1", "--district", DISTRICT, "--street", STREET, "--community", COMM_A],
     "provisioning does not manage"),
])
def test_bad_input_is_exit_2_naming_the_option_and_changes_nothing(
        district: District, args: list[str], named: str) -> None:
    before = {p.name: p.read_bytes() for p in (district.registry, district.dir / "passwd")}
    code, out = district.provision(*args)
    assert code == 2, out
    assert named in out and "Traceback" not in out
    assert {p.name: p.read_bytes() for p in (district.registry, district.dir / "passwd")} \
        == before
    assert not district.out.exists()


def test_move_needs_the_flag_and_keeps_the_password_unless_rotated(district: District) -> None:
    assert district.provision("gw-a", "--district", DISTRICT, "--street", STREET,
                              "--community", COMM_A)[0] == 0
    first = district.password("gw-a")
    code, out = district.provision("gw-a", "--district", DISTRICT, "--street", STREET,
                                   "--community", COMM_B)
    assert code == 2 and "already registered at" in out and "--move" in out
    code, out = district.provision("gw-a", "--district", DISTRICT, "--street", STREET,
                                   "--community", COMM_B, "--move", "--rotate")
    assert code == 0 and "moved from" in out, out
    assert district.password("gw-a") != first
    acl = (district.dir / "acl").read_text()
    assert f"/{COMM_B}/gw-a/events" in acl and f"/{COMM_A}/gw-a/" not in acl


def test_two_provisions_at_once_lose_nothing(district: District) -> None:
    script = textwrap.dedent("""\
        import sys
        from pathlib import Path
        from collector.provisioning.files import Provisioning
        from collector.provisioning.plan import check_place
        d, reg, out, who = sys.argv[1:]
        prov = Provisioning(Path(d), Path(reg), "mqtt://127.0.0.1:1883")
        for i in range(8):
            prov.provision(f"gw-{who}{i}", check_place("371312", "s1", f"c-{who}{i}"),
                           out_dir=Path(out))
        """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(district.dir),
                               str(district.registry), str(district.out), who], cwd=ROOT)
             for who in "pq"]
    assert [p.wait(60) for p in procs] == [0, 0]
    wanted = {f"gw-{who}{i}" for who in "pq" for i in range(8)}
    places = load_model(district.registry, GatewaysFile).gateways
    assert wanted | {"gw-old"} == set(places)
    assert wanted | {"collector-c1"} == set(passwd_hashes((district.dir / "passwd").read_text()))
    acl = (district.dir / "acl").read_text()
    assert all(f"user {gw}\n" in acl for gw in wanted)
    assert "# installed by hand in 2024" in district.registry.read_text()


# ---------------------------------------------------------------------- real Mosquitto


@pytest.fixture
def broker(district: District) -> Iterator[Mosquitto]:
    require_binary("mosquitto")
    for gw, community in (("gw-a", COMM_A), ("gw-b", COMM_B)):
        code, out = district.provision(gw, "--district", DISTRICT, "--street", STREET,
                                       "--community", community)
        assert code == 0, out
    port = free_port()
    mosq = Mosquitto(district.tmp / "mosq", port=port, listener_conf=(
        f"listener {port} 127.0.0.1\nallow_anonymous false\nuse_username_as_clientid true\n"
        f"password_file {district.dir / 'passwd'}\nacl_file {district.dir / 'acl'}\n"))
    mosq.start()
    try:
        yield mosq
    finally:
        mosq.stop()


async def _connack(port: int, user: str, password: str) -> int | None:
    code, writer = await raw_connect(port, connect_packet(user, user, password))
    writer.close()
    return code


def _client(port: int, user: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=user, username=user, password=password,
                          protocol=ProtocolVersion.V311)


async def _until(c: aiomqtt.Client, last: str) -> list[str]:
    """The topics `c` receives up to and including the first on topic `last`."""
    got: list[str] = []
    async with asyncio.timeout(15):
        async for message in c.messages:
            got.append(str(message.topic))
            if got[-1] == last:
                return got
    raise AssertionError("message stream ended")


@pytest.fixture
async def collector(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with _client(broker.port, "collector-c1", COLLECTOR_PW) as c:
        yield c


async def test_a_gateway_publishes_only_its_own_topics_under_its_own_codes(
        district: District, broker: Mosquitto, collector: aiomqtt.Client) -> None:
    own = GatewayTopics(DISTRICT, COMM_A, "gw-a")
    forbidden = [GatewayTopics(DISTRICT, COMM_B, "gw-b").events,   # another gateway
                 GatewayTopics(DISTRICT, COMM_B, "gw-b").status,
                 GatewayTopics(DISTRICT, COMM_B, "gw-a").events,   # own id, other community
                 GatewayTopics("371399", COMM_A, "gw-a").events,   # own id, other district
                 GatewayTopics(DISTRICT, COMM_A, "gw-z").events]   # an unknown gateway
    await collector.subscribe("cd/v1/+/+/+/events", qos=1)
    await collector.subscribe("cd/v1/+/+/+/status", qos=1)
    async with _client(broker.port, "gw-a", district.password("gw-a")) as gw:
        await gw.publish(own.status, b"online", qos=1)
        for topic in forbidden:
            await gw.publish(topic, b"forged", qos=1)
        await gw.publish(own.events, b"marker", qos=1)
        assert await _until(collector, own.events) == [own.status, own.events]


async def test_a_gateway_reads_only_its_own_acks(district: District, broker: Mosquitto,
                                                 collector: aiomqtt.Client) -> None:
    own, other = GatewayTopics(DISTRICT, COMM_A, "gw-a"), GatewayTopics(DISTRICT, COMM_B, "gw-b")
    async with _client(broker.port, "gw-a", district.password("gw-a")) as gw:
        await gw.subscribe(other.ack, qos=1)
        await gw.subscribe(own.ack, qos=1)
        await collector.publish(other.ack, b"for b", qos=1)
        await collector.publish(own.ack, b"for a", qos=1)
        assert await _until(gw, own.ack) == [own.ack]


async def test_wrong_password_and_revoked_gateway_cannot_connect(
        district: District, broker: Mosquitto) -> None:
    assert await _connack(broker.port, "gw-b", district.password("gw-b")) == 0
    assert await _connack(broker.port, "gw-b", district.password("gw-a")) not in (0, None)
    assert await _connack(broker.port, "gw-nobody", "x") not in (0, None)
    code, out = district.provision("--revoke", "gw-b")
    assert code == 0 and "revoked" in out, out
    assert "gw-b" not in load_model(district.registry, GatewaysFile).gateways
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGHUP)  # what `systemctl reload mosquitto` does
    async with asyncio.timeout(10):  # the reload is asynchronous: poll until it took
        for _ in iter(int, 1):
            if await _connack(broker.port, "gw-b", district.password("gw-b")) != 0:
                break
            await asyncio.sleep(0.05)
    assert await _connack(broker.port, "gw-a", district.password("gw-a")) == 0


async def test_a_managed_broker_includes_the_provisioned_gateways(district: District) -> None:
    require_binary("mosquitto")
    from collector.config import ManagedBrokerConfig
    from collector.managed_broker import ManagedBroker
    from collector.provisioning.files import Provisioning

    assert district.provision("gw-a", "--district", DISTRICT, "--street", STREET,
                              "--community", COMM_A)[0] == 0
    cfg = ManagedBrokerConfig(listen=f"127.0.0.1:{free_port()}", state_dir=district.tmp / "mb")
    prov = Provisioning(district.dir, district.registry, "mqtt://127.0.0.1:1883")
    broker = ManagedBroker(cfg, "t1", prov)
    await broker.start()
    try:
        ep = broker.endpoint()
        own = GatewayTopics(DISTRICT, COMM_A, "gw-a")
        async with _client(cfg.port, ep.username or "", ep.password.get_secret_value()
                           if ep.password else "") as coll, \
                _client(cfg.port, "gw-a", district.password("gw-a")) as gw:
            await coll.subscribe("cd/v1/+/+/+/events", qos=1)
            await gw.publish(GatewayTopics(DISTRICT, COMM_B, "gw-a").events, b"x", qos=1)
            await gw.publish(own.events, b"marker", qos=1)
            assert await _until(coll, own.events) == [own.events]
        assert district.provision("gw-new", "--district", DISTRICT, "--street", STREET,
                                  "--community", COMM_B)[0] == 0
        assert district.provision("--revoke", "gw-a")[0] == 0
        broker.reload()  # what the collector does on SIGHUP
        async with asyncio.timeout(10):
            for _ in iter(int, 1):
                if await _connack(cfg.port, "gw-a", district.password("gw-a")) != 0:
                    break
                await asyncio.sleep(0.05)
        assert await _connack(cfg.port, "gw-new", district.password("gw-new")) == 0
    finally:
        await broker.stop()


def test_config_rules_of_the_provisioning_section(district: District, tmp_path: Path) -> None:
    text = district.config.read_text()
    no_registry = tmp_path / "no-registry.yaml"
    no_registry.write_text("\n".join(line for line in text.splitlines()
                                     if not line.startswith("gateways:")))
    result = CliRunner().invoke(main, ["validate", str(no_registry)])
    assert result.exit_code == 2 and "provisioning needs a `gateways:` section" in result.output
    managed = tmp_path / "managed.yaml"
    managed.write_text(textwrap.dedent(f"""\
        collector: {{id: c1}}
        store: sqlite:///{tmp_path}/district.db
        managed_broker: {{listen: "127.0.0.1:1883", state_dir: {tmp_path}/mb}}
        """))
    result = CliRunner().invoke(main, ["validate", str(managed)])
    assert result.exit_code == 2 and "no gateway user" in result.output


def test_registry_edits_keep_block_entries_and_the_comments_after_them() -> None:
    from collector.provisioning.plan import check_place, registry_set

    place = check_place(DISTRICT, STREET, COMM_A)
    text = ("gateways:\n  gw-a:\n    district: '371312'\n    street: s1\n    community: c1\n"
            "# about gw-a\n")
    added = registry_set(text, "gw-b", place)
    assert added.splitlines()[:5] == text.splitlines()[:5]
    assert added.splitlines()[5].startswith("  gw-b: {") and added.endswith("# about gw-a\n")
    replaced = registry_set(text, "gw-a", place)
    assert replaced == ('gateways:\n  gw-a: {district: "371312", street: "371312001", '
                        'community: "371312001001"}\n# about gw-a\n')
    assert registry_set(text, "gw-a", None) == "gateways: {}\n# about gw-a\n"
    assert registry_set("gateways: {}\n", "gw-b", place).startswith("gateways:\n  gw-b: {")
