"""A real OpenSSH server for tests: `/usr/sbin/sshd -D -e -f CFG` on 127.0.0.1, random port.

Each server has its own host key, an AuthorizedKeysFile in its folder (`StrictModes no`,
so pytest's tmp dirs do), its PidFile there too, key auth only, the internal SFTP server.
As root it logs in as root (the test's user otherwise). Skips without sshd, fails under
CI=true (tests/peers.require_binary). Used by tests/test_fleet_*.py and bench/fleet_push.py.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers import free_port, stop_process, wait_port


def keygen(path: Path, comment: str = "edge-fleet-test") -> Path:
    """An unencrypted ed25519 key pair at `path` / `path`.pub (ssh-keygen)."""
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, capture_output=True)
    return path


def user() -> str:
    return getpass.getuser()


@dataclass
class Sshd:
    """One sshd; `authorized` public key lines may log in."""

    workdir: Path
    authorized: list[str]
    binary: str = "/usr/sbin/sshd"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key(self) -> Path:
        return self.workdir / "ssh_host_ed25519_key"

    def known_hosts_line(self) -> str:
        """This server's line for a known_hosts file (`[127.0.0.1]:PORT type key`)."""
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def start(self) -> Sshd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keygen(self.host_key, "test-host")
        (self.workdir / "authorized_keys").write_text("".join(self.authorized))
        cfg = self.workdir / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\nPidFile {self.workdir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "StrictModes no\nUsePAM no\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nAllowTcpForwarding local\n"
            "PermitUserEnvironment no\nMaxStartups 200\nMaxSessions 50\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\nUseDNS no\n")
        if os.geteuid() == 0:  # privilege separation needs its empty folder
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.workdir / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([self.binary, "-D", "-e", "-f", str(cfg)],
                                     stdout=log, stderr=log)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"sshd did not start: {(self.workdir / 'sshd.log').read_text()}"
                                 ) from None
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def require_sshd() -> str:
    """The sshd binary (skip without it, fail under CI=true); ssh-keygen is needed too."""
    from tests.peers import require_binary

    require_binary("ssh-keygen")
    return require_binary("sshd")


DISTRICT, STREET, COMMUNITY = "371312", "371312001", "371312001001"


def inventory(path: Path, gateways: list[dict[str, object]], *, client_key: Path,
              known_hosts: Path, community: str = COMMUNITY, name: str = "Qinghe",
              defaults: dict[str, object] | None = None, **ssh: object) -> Path:
    """Write an inventory YAML: all `gateways` (id, host, port, ...) in one community of
    one street of one district; `ssh` adds keys of the `ssh:` section."""
    import yaml

    doc = {
        "defaults": {"user": user(), **(defaults or {})},
        "ssh": {"client_key": str(client_key), "known_hosts": str(known_hosts),
                "connect_timeout_s": 5, **ssh},
        "districts": [{"code": DISTRICT, "name": "Lanshan", "streets": [{
            "code": STREET, "name": "Xiyuan", "communities": [{
                "code": community, "name": name, "gateways": gateways}]}]}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
