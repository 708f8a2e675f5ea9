"""Embedded MQTT 3.1.1 broker (amqtt 0.12.1) hosted in the collector process.

For a small district or a demo: no Mosquitto to install. The collector connects to it
through the loopback like any client, with a per-run internal account.

Access control, enforced by the two plugins below:
- a `gateway` user may publish only `cd/v1/<d>/<c>/<its own name>/{events,status}` and
  subscribe only to its own `…/{ack,cmd}` topics;
- a `collector` user (and the internal one) may subscribe to every gateway's
  `events`/`status` and publish every gateway's `ack`/`cmd`;
- anonymous clients are refused unless `allow_anonymous: true` (then they may do
  anything: for development only; amqtt also queues nothing for them offline).

Why not amqtt's own plugins: `FileAuthPlugin` needs a password file on disk and verifies
Argon2 in the event loop on every CONNECT (tens of ms each, which a reconnect storm of a
whole district would pay in one go), and `TopicAccessControlListPlugin` 0.12.1 has no
`subscribe_acl` field in its config dataclass (only the deprecated `acl`) and cannot say
"the user's own gateway segment". Both replacements are small and pure.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from pydantic import SecretStr

from collector.config import INTERNAL_USER_PREFIX, EmbeddedBrokerConfig
from edge_agent.logs import get_logger
from edge_agent.mqtt import Endpoint
from edge_agent.topics import PREFIX

log = get_logger("collector.broker")


class _QuietProbes(logging.Filter):
    """amqtt logs a TCP connection that closes without an MQTT packet (a port probe, a
    health check) as an error; it is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No data from")


logging.getLogger("amqtt.broker").addFilter(_QuietProbes())

_PREFIX = PREFIX.split("/")
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


class EmbeddedBrokerError(RuntimeError):
    pass


# ---------------------------------------------------------------------- ACL (pure)


def _split(topic: str) -> list[str] | None:
    parts = topic.split("/")
    return parts if len(parts) == 6 and parts[:2] == _PREFIX and "#" not in parts else None


def gateway_may(user: str, topic: str, action: str) -> bool:
    """A gateway publishes its own events/status and subscribes to its own ack/cmd."""
    parts = _split(topic)
    if parts is None or parts[4] != user:
        return False
    if action == Action.PUBLISH:
        return parts[5] in ("events", "status") and "+" not in parts
    if action == Action.SUBSCRIBE:
        return parts[5] in ("ack", "cmd")
    return bool(action == Action.RECEIVE)


def collector_may(topic: str, action: str) -> bool:
    """A collector reads every gateway's events/status and answers on ack/cmd."""
    parts = _split(topic)
    if parts is None:
        return False
    if action == Action.PUBLISH:
        return parts[5] in ("ack", "cmd") and "+" not in parts
    if action == Action.SUBSCRIBE:
        return parts[5] in ("events", "status")
    return bool(action == Action.RECEIVE)


def _digest(salt: str, password: str) -> str:
    return hashlib.sha256(f"{salt}\0{password}".encode()).hexdigest()


# ---------------------------------------------------------------------- amqtt plugins


@dataclass
class _AuthConfig:
    #: username -> sha256(salt, password); the salt is random per broker start.
    users: dict[str, str] = field(default_factory=dict)
    salt: str = ""
    allow_anonymous: bool = False


class PasswordAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped here
    Config = _AuthConfig

    async def authenticate(self, *, session: Session) -> bool | None:
        cfg: _AuthConfig = self.config
        if not session.username:
            session.is_anonymous = cfg.allow_anonymous
            return cfg.allow_anonymous
        expected = cfg.users.get(session.username)
        given = _digest(cfg.salt, session.password or "")
        return expected is not None and hmac.compare_digest(given, expected)


@dataclass
class _AclConfig:
    gateways: list[str] = field(default_factory=list)
    collectors: list[str] = field(default_factory=list)
    allow_anonymous: bool = False


class GatewayAclPlugin(BaseTopicPlugin):  # type: ignore[misc]
    Config = _AclConfig

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        cfg: _AclConfig = self.config
        if session is None or topic is None or action is None:
            return False
        user = session.username
        if not user:
            return cfg.allow_anonymous
        if user in cfg.collectors:
            return collector_may(topic, action)
        if user in cfg.gateways:
            allowed = gateway_may(user, topic, action)
            if not allowed:
                log.warning("broker_acl_denied", user=user, topic=topic, action=str(action))
            return allowed
        return False


# ---------------------------------------------------------------------- the broker


class EmbeddedBroker:
    def __init__(self, cfg: EmbeddedBrokerConfig, collector_id: str) -> None:
        self.cfg = cfg
        self._user = f"{INTERNAL_USER_PREFIX}{collector_id}"
        self._password = secrets.token_urlsafe(24)
        self._broker: Broker | None = None

    def amqtt_config(self) -> dict[str, Any]:
        """The amqtt config dict. Reads the users' secrets now (raises SecretError)."""
        salt = secrets.token_hex(16)
        users = {u.username: _digest(salt, u.password.reveal().get_secret_value())
                 for u in self.cfg.users}
        users[self._user] = _digest(salt, self._password)
        collectors = [u.username for u in self.cfg.users if u.role == "collector"]
        return {
            "listeners": {"default": {"type": "tcp", "bind": self.cfg.listen}},
            "plugins": {
                f"{__name__}.PasswordAuthPlugin": {
                    "users": users, "salt": salt, "allow_anonymous": self.cfg.allow_anonymous},
                f"{__name__}.GatewayAclPlugin": {
                    "gateways": [u.username for u in self.cfg.users if u.role == "gateway"],
                    "collectors": [*collectors, self._user],
                    "allow_anonymous": self.cfg.allow_anonymous},
            },
        }

    async def start(self) -> None:
        config = self.amqtt_config()
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps OSError (port in use) in BrokerError
            cause = exc.__cause__ or exc
            raise EmbeddedBrokerError(
                f"embedded broker cannot listen on {self.cfg.listen}: {cause}") from exc
        self._broker = broker
        log.info("embedded_broker_started", listen=self.cfg.listen,
                 users=len(self.cfg.users), allow_anonymous=self.cfg.allow_anonymous)
        if self.cfg.allow_anonymous:
            log.warning("embedded_broker_anonymous",
                        detail="anonymous clients may publish for any gateway")

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()
            log.info("embedded_broker_stopped")

    def endpoint(self) -> Endpoint:
        """How the collector reaches this broker: loopback, MQTT 3.1.1, internal account."""
        host = self.cfg.host
        return Endpoint(
            host="127.0.0.1" if host in _WILDCARD_HOSTS else host.strip("[]"),
            port=self.cfg.port,
            username=self._user,
            password=SecretStr(self._password),
            protocol="3.1.1",
        )
