"""The cluster's certificate authority: made at the control plane's first start, it signs the
control plane's own certificate and each enrolled host agent's, and nothing else.

Agents and the control plane authenticate each other with these certificates alone (mutual
TLS on the cluster port): a certificate not signed by this CA, or signed for a host the store
does not hold, is refused. The CA's key lives in a file of its own under the home
(``cluster/ca.key``, 0600), not in the database.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gureum.errors import Unauthenticated
from gureum.model.cluster import CONTROL_PLANE
from gureum.sys.pki import csr_pem, fingerprint, issued_name, new_key_pem

VALID_DAYS = 365


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class ClusterCA:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cert_path, self.key_path = folder / "ca.pem", folder / "ca.key"

    def ensure(self) -> None:
        """Make the CA, and the control plane's certificate, the first time."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gureum cluster CA")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256())
            )
            _write_private(self.key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ))  # fmt: skip
            self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        own_key, own_cert = self.folder / "control-plane.key", self.folder / "control-plane.pem"
        if not own_cert.exists():
            key_pem = new_key_pem()
            _write_private(own_key, key_pem)
            own_cert.write_bytes(self.issue(csr_pem(key_pem, CONTROL_PLANE), CONTROL_PLANE))

    @property
    def pem(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def control_plane_files(self) -> tuple[Path, Path]:
        """(certificate, key) the control plane serves the cluster port with."""
        return self.folder / "control-plane.pem", self.folder / "control-plane.key"

    def fingerprint(self) -> str:
        return fingerprint(self.pem)

    def issue(self, request_pem: bytes, name: str) -> bytes:
        """A certificate for ``name`` (the name the store enrolled, whatever the request says)
        on the request's key, for both ends of a TLS connection."""
        try:
            req = x509.load_pem_x509_csr(request_pem)
        except ValueError:
            raise Unauthenticated("the certificate request is not a PEM CSR") from None
        if not req.is_signature_valid:
            raise Unauthenticated("the certificate request's signature does not verify")
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.pem)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(req.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def name_of(self, der: bytes) -> str:
        """The name a peer's certificate was issued for by this CA (``pki.issued_name``)."""
        return issued_name(self.pem, der)
