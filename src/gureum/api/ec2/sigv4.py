"""AWS Signature Version 4, checked by the service: in the Authorization header, or in the query
string (a presigned URL).

The expected signature is computed by botocore's own signer (``SigV4Auth``, ``SigV4QueryAuth``)
from the request exactly as it arrived: its method, its path and query as sent, the headers the
client says it signed, and the body's SHA-256. Compared in constant time. What AWS checks
besides, checked here too:

- the date: within 15 minutes of now (``RequestExpired`` past it); a presigned URL until its
  ``X-Amz-Expires`` (at most 7 days);
- the credential's scope: its date is the request's, its region the service's, its service
  ``ec2`` or ``sts``, and it ends with ``aws4_request``;
- ``host`` among the signed headers, and a body whose ``X-Amz-Content-SHA256`` (when sent) is
  its real hash (botocore's signer trusts that header: a body changed under a kept header would
  otherwise pass).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from dataclasses import dataclass

# botocore ships no type information: its signer is used as documented, untyped.
from botocore.auth import SigV4Auth, SigV4QueryAuth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from gureum.api.ec2.errors import Ec2Error, auth_failure

ALGORITHM = "AWS4-HMAC-SHA256"
SKEW_S = 15 * 60
MAX_EXPIRES_S = 7 * 86400
SERVICES = ("ec2", "sts")


@dataclass(frozen=True)
class Signed:
    """What a request says about its signature, before the secret is known."""

    access_key_id: str
    date: str  # X-Amz-Date: 20261130T120000Z
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    presigned: bool
    expires_s: int = 0


def _timestamp(value: str) -> float:
    try:
        return calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise auth_failure(
            f"X-Amz-Date {value[:40]!r} is not of the form 20261130T120000Z"
        ) from None


def _credential(value: str) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise auth_failure("the credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request")
    return parts[0], parts[1], parts[2], parts[3]


def read(headers: dict[str, str], query: dict[str, str]) -> Signed:
    """The signature's parts, from the Authorization header or a presigned URL's query."""
    header = headers.get("authorization", "")
    if header:
        algorithm, _, rest = header.partition(" ")
        if algorithm != ALGORITHM:
            raise auth_failure(f"only {ALGORITHM} signatures are accepted")
        fields = {}
        for part in rest.split(","):
            key, _, value = part.strip().partition("=")
            fields[key] = value
        if not {"Credential", "SignedHeaders", "Signature"} <= set(fields):
            raise auth_failure(
                "the Authorization header lacks Credential, SignedHeaders or Signature"
            )
        key, day, region, service = _credential(fields["Credential"])
        date = headers.get("x-amz-date", "")
        names = tuple(fields["SignedHeaders"].split(";"))
        return Signed(key, date, day, region, service, names, fields["Signature"], False)
    if query.get("X-Amz-Algorithm"):
        if query["X-Amz-Algorithm"] != ALGORITHM:
            raise auth_failure(f"only {ALGORITHM} signatures are accepted")
        key, day, region, service = _credential(query.get("X-Amz-Credential", ""))
        try:
            expires = int(query.get("X-Amz-Expires", "0"))
        except ValueError:
            raise auth_failure("X-Amz-Expires is not a number of seconds") from None
        return Signed(
            key,
            query.get("X-Amz-Date", ""),
            day,
            region,
            service,
            tuple(query.get("X-Amz-SignedHeaders", "").split(";")),
            query.get("X-Amz-Signature", ""),
            True,
            expires,
        )
    raise Ec2Error("MissingAuthenticationToken", "the request is not signed (AWS SigV4)", 401)


def check_scope(signed: Signed, region: str, now: float) -> None:
    """Everything but the signature itself: date, expiry, scope, signed host."""
    at = _timestamp(signed.date)
    if signed.scope_date != signed.date[:8]:
        raise auth_failure("the credential's date is not the request's")
    if signed.region != region:
        raise auth_failure(f"this service's region is {region}, not {signed.region[:40]!r}")
    if signed.service not in SERVICES:
        raise auth_failure(f"the credential is for service {signed.service[:40]!r}, not ec2")
    if "host" not in signed.signed_headers:
        raise auth_failure("the host header must be signed")
    if signed.presigned:
        if not 0 < signed.expires_s <= MAX_EXPIRES_S:
            raise auth_failure("X-Amz-Expires must be 1 to 604800 seconds")
        if now > at + signed.expires_s:
            raise Ec2Error("RequestExpired", "the presigned URL has expired", 400)
        if at > now + SKEW_S:
            raise Ec2Error("RequestExpired", "the request's date is in the future", 400)
    elif abs(now - at) > SKEW_S:
        raise Ec2Error(
            "RequestExpired", "the request's date is more than 15 minutes from the service's", 400
        )


def verify(
    signed: Signed,
    secret: str,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Refuse (AuthFailure) unless ``signed.signature`` is what ``secret`` makes of the request
    as it arrived (``url``: scheme, Host, path and query exactly as sent)."""
    declared = headers.get("x-amz-content-sha256")
    if not signed.presigned and declared not in (None, hashlib.sha256(body).hexdigest()):
        raise auth_failure("the body is not the one whose hash was signed")
    kept = {name: headers.get(name, "") for name in signed.signed_headers}
    credentials = Credentials(signed.access_key_id, secret)
    if signed.presigned:
        # The query the client signed: everything it sent but the signature itself.
        base, _, query = url.partition("?")
        rest = "&".join(p for p in query.split("&") if not p.startswith("X-Amz-Signature="))
        request = AWSRequest(
            method=method, url=f"{base}?{rest}" if rest else base, data=body, headers=kept
        )
        signer: SigV4Auth = SigV4QueryAuth(
            credentials, signed.service, signed.region, expires=signed.expires_s
        )
    else:
        request = AWSRequest(method=method, url=url, data=body, headers=kept)
        signer = SigV4Auth(credentials, signed.service, signed.region)
    request.context["timestamp"] = signed.date
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected.encode(), signed.signature.encode()):
        raise auth_failure(
            "AWS was not able to validate the provided access credentials (the signature does "
            "not match: check the secret key and the endpoint URL)"
        )
