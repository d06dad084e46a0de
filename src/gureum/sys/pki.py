"""Keys, certificate requests and fingerprints: the pieces of the cluster's PKI both ends use
(the control plane's CA, ``service/cluster_ca.py``; an agent joining, ``host/enrolment.py``)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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
