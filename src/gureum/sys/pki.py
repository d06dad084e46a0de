"""Keys, certificate requests and fingerprints: the pieces of the cluster's PKI both ends use
(the control plane's CA, ``service/cluster_ca.py``; an agent joining, ``host/enrolment.py``)."""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gureum.errors import Unauthenticated


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the certificate's DER, in hex: what a join token pins."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key_pem: bytes, name: str) -> bytes:
    """A certificate request for ``name`` with the key (what an agent sends to join)."""
    key = serialization.load_pem_private_key(key_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("an EC private key is expected")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    req = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return req.public_bytes(serialization.Encoding.PEM)


def issued_name(ca_pem: bytes, der: bytes) -> str:
    """The name a peer's certificate (DER, as TLS gives it) was issued for, if the CA issued it
    and it is in its validity period; Unauthenticated otherwise. TLS has already checked the
    chain: this checks it again, since it is what the answer rests on."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        raise Unauthenticated("the peer's certificate is not the cluster CA's") from None
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Unauthenticated("the peer's certificate has expired")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
