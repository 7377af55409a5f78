"""The head boots its whole control plane from its own cloud-init in the box, and is reached over
HTTPS only: configs/clusters/box.yaml, ``up_scaleway`` against the booting fake, the control API
on the box's managed database, the Ray head with token auth, Caddy on 443 with a certificate of a
CA this test generates. From the public side only 443 answers; the head deletes its own user data
once booted; no secret this test generated appears in any log of the box."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from scaleway.instance.v1 import InstanceV1API
from scaleway_core.client import Client

from cluster.clouds.scaleway import ScalewayCloud, ScalewayConfig
from cluster.clouds.scaleway_head import (
    API_UNIT,
    FRONT_DOOR_UNIT,
    HEAD_UNIT,
    SCW_ENV_PATH,
    up_scaleway,
)
from cluster.cluster_config import parse_cluster
from cluster.fake_scaleway import FAKE_ACCESS_KEY, FAKE_PROJECT_ID
from cluster.fake_scaleway.booting import BootingFake, serve_booting
from cluster.fake_scaleway.box_db import BoxDatabase
from cluster.fake_scaleway.state import FakeConfig
from cluster.head import HeadInfo
from tests.box.conftest import _box_or_skip
from tests.box.test_booting_fake import in_ns, open_ports

REPO = Path(__file__).resolve().parents[2]
BOX_YAML = REPO / "configs" / "clusters" / "box.yaml"
VENV = REPO / ".venv"
DOMAIN = "box.inventiv.test"


@dataclass
class BoxCa:
    ca_pem: str
    ca_key_pem: str
    cert_pem: str
    key_pem: str


def make_ca(domain: str) -> BoxCa:
    """A CA and a server certificate for ``domain`` signed by it (what an ACME CA does in
    production, here in the test's hands)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Inventiv box CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def key_pem(k: ec.EllipticCurvePrivateKey) -> str:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()

    return BoxCa(ca_pem=ca.public_bytes(serialization.Encoding.PEM).decode(),
                 ca_key_pem=key_pem(ca_key),
                 cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                 key_pem=key_pem(key))


@dataclass
class HeadBox:
    fake: BootingFake
    cloud: ScalewayCloud
    db: BoxDatabase
    info: HeadInfo
    vm: Any
    ca_path: Path
    secrets: dict[str, str]


def _pem_body(pem: str) -> str:
    """The base64 of a PEM key without its armour lines (what a leak would show)."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


@pytest.fixture(scope="module")
def head_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadBox]:
    _box_or_skip()
    secret_key = str(uuid.uuid4())  # the operator's SCW secret key, as far as the fake knows
    fake = serve_booting(config=FakeConfig(secret_key=secret_key),
                         # The venv's editable install imports the checkout by its path.
                         binds=[(str(VENV), "/opt/inventiv/venv"), (str(REPO), str(REPO))])
    try:
        db = fake.start_database()
        state = tmp_path_factory.mktemp("box-state")
        ca = make_ca(DOMAIN)
        (state / "tls").mkdir()
        for name, body in (("ca.pem", ca.ca_pem), ("cert.pem", ca.cert_pem),
                           ("key.pem", ca.key_pem)):
            (state / "tls" / name).write_text(body)
        data = yaml.safe_load(BOX_YAML.read_text())
        data["state_dir"] = str(state)
        data["front_door"].update(tls_cert_file=str(state / "tls" / "cert.pem"),
                                  tls_key_file=str(state / "tls" / "key.pem"))
        cluster = parse_cluster(data, source=str(BOX_YAML))
        client = Client(access_key=FAKE_ACCESS_KEY, secret_key=secret_key, api_url=fake.url,
                        default_project_id=FAKE_PROJECT_ID, default_zone="fr-par-2",
                        default_region="fr-par")
        cloud = ScalewayCloud(ScalewayConfig(zones=("fr-par-2",), poll_interval_s=0.05,
                                             boot_timeout_s=60, connect_timeout_s=2,
                                             read_timeout_s=10), client=client)
        info = up_scaleway(cluster, cloud=cloud, state_dir=state,
                           head_api_url=fake.box_api_url,
                           environ={"INVENTIV_DATABASE_PASSWORD": db.password})
        vm = fake.box.vm(info.provider_instance_id or "")
        assert vm is not None and info.public_ip
        status = fake.box.wait_booted(vm.server_id, timeout_s=180,
                                      units=[HEAD_UNIT, API_UNIT, FRONT_DOOR_UNIT])
        assert status["phase"] == "booted", status
        # The operator points the domain's A record at the head's public IP.
        fake.box.publish_public_name(DOMAIN, info.public_ip)
        secrets = {"SCW_SECRET_KEY": secret_key,
                   "ray token": Path(info.token_path).read_text().strip(),
                   "database password": db.password,
                   "admin password": (state / "admin_password").read_text().strip(),
                   "TLS key": _pem_body(ca.key_pem), "CA key": _pem_body(ca.ca_key_pem)}
        yield HeadBox(fake=fake, cloud=cloud, db=db, info=info, vm=vm,
                      ca_path=state / "tls" / "ca.pem", secrets=secrets)
    finally:
        fake.stop()


def https(hb: HeadBox, path: str, *, method: str = "GET", body: dict[str, Any] | None = None,
          wait_ready_s: float = 0.0) -> tuple[int, dict[str, Any] | str]:
    """A request from the public side (the box's "internet") to https://DOMAIN, verified with
    the box CA; ``wait_ready_s``: retry while the front door or its upstream is not up yet."""
    code = f"""
import json, ssl, time, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile={str(hb.ca_path)!r})
deadline = time.monotonic() + {wait_ready_s}
while True:
    req = urllib.request.Request({f"https://{DOMAIN}{path}"!r}, method={method!r},
                                 data={json.dumps(body).encode() if body else None!r},
                                 headers={{"Content-Type": "application/json"}})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    except OSError as exc:
        status, text = 0, repr(exc)
    if status in (200, 401, 404, 422) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([status, text]))
"""
    status, text = json.loads(in_ns(hb.fake.box, hb.fake.box.public_netns,
                                    code))
    try:
        return int(status), json.loads(text)
    except ValueError:
        return int(status), text


def test_control_api_answers_over_https_with_the_box_ca(head_box: HeadBox) -> None:
    # Ready means migrated on the box's database, reached over the private network.
    deadline = time.monotonic() + 150
    while True:
        status, body = https(head_box, "/readyz", wait_ready_s=25)
        if status == 200 or time.monotonic() > deadline:
            break
    assert (status, body) == (200, {"status": "ready"}), head_box.vm.log(f"{API_UNIT}.log")[-2000:]
    # /api/* is the control API: a protected route answers with its structured error.
    status, body = https(head_box, "/api/users")
    assert status == 401 and isinstance(body, dict) and "error" in body, body
    # The bootstrap admin's password (generated into the state dir by `up`) logs in.
    status, body = https(head_box, "/api/auth/login", method="POST",
                         body={"username": "admin",
                               "password": head_box.secrets["admin password"]})
    assert status == 200, body
    # Without the box CA, the certificate is not trusted.
    code = (f"import ssl,urllib.request\ntry: urllib.request.urlopen('https://{DOMAIN}/healthz',"
            " timeout=5)\nexcept Exception as e: print(type(getattr(e,'reason',e)).__name__)")
    assert in_ns(head_box.fake.box, head_box.fake.box.public_netns, code) == \
        "SSLCertVerificationError"


def test_only_443_answers_on_the_public_side(head_box: HeadBox) -> None:
    box, vm = head_box.fake.box, head_box.vm
    assert open_ports(box, box.public_netns, head_box.info.public_ip or "") == [443]
    # The other ports do listen (on the private network: the front door, Ray GCS, the API).
    private = open_ports(box, head_box.db.netns, vm.private_ips[0])
    assert {443, 6379, 8080} <= set(private), private
    # The public side cannot reach the private network at all.
    assert open_ports(box, box.public_netns, vm.private_ips[0]) == []


def test_the_head_deleted_its_own_user_data(head_box: HeadBox) -> None:
    api = InstanceV1API(head_box.cloud.client)
    vm = head_box.vm
    assert api.list_server_user_data(server_id=vm.server_id).user_data == []
    # ... after cloud-init wrote what the head needs (root-only).
    env_file = vm.view(SCW_ENV_PATH)
    assert head_box.secrets["SCW_SECRET_KEY"] in env_file.read_text()
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert "deleted" in vm.log("cloud-init-output.log")


def _box_logs(hb: HeadBox) -> list[Path]:
    """Every log the box wrote: the VMs' unit/init/cloud-init output, Ray's session logs, the
    database server's log."""
    logs = []
    for path in hb.fake.box.root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        parts = set(path.relative_to(hb.fake.box.root).parts)
        if "logs" in parts or path.suffix in (".log", ".err", ".out"):
            logs.append(path)
    return logs


def test_no_secret_in_any_log_of_the_box(head_box: HeadBox) -> None:
    # After the HTTPS calls above (the login included), and with the Ray head running.
    https(head_box, "/readyz", wait_ready_s=30)
    logs = _box_logs(head_box)
    names = {p.name for p in logs}
    # The grep sees the logs it is about (a test that cannot fail is a defect).
    assert {f"{HEAD_UNIT}.log", f"{API_UNIT}.log", f"{FRONT_DOOR_UNIT}.log",
            "cloud-init-output.log", "postgres.log"} <= names, sorted(names)
    assert any("gcs_server" in n for n in names), sorted(names)
    leaks = [(label, str(path)) for path in logs
             for label, value in head_box.secrets.items()
             if value and value in path.read_text(errors="replace")]
    assert leaks == []


def _gcs_nodes_from_private_side(hb: HeadBox, token_file: Path) -> str:
    """Ask the head's GCS for its nodes from the private network (the database's namespace),
    with the token in ``token_file``: the JSON of the nodes, or the error's type name."""
    # The head's raylet registers a few seconds after the GCS answers: poll up to a minute.
    code = ("import json,time\nfrom core.ray_private import GcsProbe\n"
            "t=time.monotonic()+60\n"
            "while True:\n"
            " try:\n"
            f"  nodes = GcsProbe({hb.vm.private_ips[0] + ':6379'!r}, timeout_s=5).alive()\n"
            "  out = json.dumps([[n.instance_id, n.is_head] for n in nodes])\n"
            " except Exception as exc:\n  out = type(exc).__name__\n"
            " if out != '[]' or time.monotonic() > t: break\n"
            " time.sleep(0.5)\n"
            "print(out)\n")
    done = hb.fake.box.exec_in(hb.db.netns, [
        "env", f"PYTHONPATH={REPO}", "RAY_AUTH_MODE=token", f"RAY_AUTH_TOKEN_PATH={token_file}",
        str(VENV / "bin" / "python"), "-c", code], timeout_s=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_ray_head_answers_on_the_private_network_with_its_token_only(
        head_box: HeadBox, tmp_path: Path) -> None:
    nodes = _gcs_nodes_from_private_side(head_box, Path(head_box.info.token_path))
    assert nodes.startswith("["), nodes
    assert json.loads(nodes) == [[head_box.info.head_instance_id, True]], \
        head_box.vm.log(f"{HEAD_UNIT}.log")[-3000:]
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-cluster-token")
    assert not _gcs_nodes_from_private_side(head_box, wrong).startswith("[")
