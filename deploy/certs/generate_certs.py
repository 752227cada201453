"""Generate the TLS certificates and keys of a MeDi-Fed federation.

Writes into ``--out`` (default ``./certs``):

| file | who keeps it | what for |
|---|---|---|
| ``ca.crt`` / ``ca.key`` | coordinator (key offline) | root of trust; every site gets ``ca.crt`` |
| ``server.crt`` / ``server.key`` | coordinator | SuperLink TLS (``--ssl-certfile``/``--ssl-keyfile``) |
| ``supernodes/<site>`` / ``<site>.pub`` | site / coordinator | SuperNode authentication (OpenSSH EC P-384) |
| ``app-signing/<name>`` / ``<name>.pub`` | app publisher | ed25519 keys that sign app bundles |
| ``trusted-entities.yaml`` | every site | trust list for ``flower-supernode --trusted-entities`` |

Example::

    python deploy/certs/generate_certs.py --out certs --sites A7 A8 AC \\
        --san coordinator.example.org

The server certificate always covers ``127.0.0.1`` and ``localhost``; add the
coordinator's real host names or addresses with ``--san``. Private keys are
written with mode 0600. Existing files are kept unless ``--overwrite`` is given,
so re-running the script to add a site does not invalidate issued certificates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger("generate_certs")

CA_VALIDITY_DAYS = 3650  # the root outlives several server certificates
SERVER_VALIDITY_DAYS = 825  # the CA/Browser Forum maximum for TLS server certificates
DEFAULT_SANS = ("127.0.0.1", "localhost")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> bool:
    """Write ``data`` to ``path`` unless it exists; private files get mode 0600."""
    if path.exists() and not overwrite:
        logger.info("keeping existing %s", path)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    logger.info("wrote %s", path)
    return True


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(out: Path, *, overwrite: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create (or load) the federation's root CA."""
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if cert_path.exists() and key_path.exists() and not overwrite:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key  # type: ignore[return-value]
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MeDi-Fed federation CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _pem_private(key), private=True, overwrite=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=True)
    return cert, key


def make_server_cert(
    out: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: Sequence[str],
    *,
    overwrite: bool,
) -> None:
    """Issue the SuperLink's TLS certificate for ``sans`` (IP addresses or DNS names)."""
    if (out / "server.crt").exists() and not overwrite:
        logger.info("keeping existing %s", out / "server.crt")
        return
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(out / "server.key", _pem_private(key), private=True, overwrite=True)
    _write(out / "server.crt", cert.public_bytes(serialization.Encoding.PEM), private=False, overwrite=True)


def make_supernode_keys(out: Path, sites: Sequence[str], *, overwrite: bool) -> None:
    """One EC P-384 key pair per site, in OpenSSH format as Flower's SuperNode auth expects."""
    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        if _write(out / "supernodes" / site, private, private=True, overwrite=overwrite):
            _write(out / "supernodes" / f"{site}.pub", public + b"\n", private=False, overwrite=True)


def public_key_id(public_openssh: bytes) -> str:
    """Stable id of an app-signing key in the trust list: ``fpk_`` + the first 32 hex digits of its SHA-256."""
    return "fpk_" + hashlib.sha256(public_openssh.strip()).hexdigest()[:32]


def make_signing_keys(out: Path, names: Sequence[str], *, overwrite: bool) -> None:
    """ed25519 app-signing key pairs plus ``trusted-entities.yaml`` listing every public key."""
    folder = out / "app-signing"
    for name in names:
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        if _write(folder / name, private, private=True, overwrite=overwrite):
            _write(folder / f"{name}.pub", public + b"\n", private=False, overwrite=True)
    lines = ["# Public keys whose app-bundle signatures this SuperNode accepts (id: OpenSSH key)."]
    for pub in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
        text = pub.read_bytes().strip()
        lines.append(f"{public_key_id(text)}: '{text.decode('ascii')}'")
    _write(out / "trusted-entities.yaml", ("\n".join(lines) + "\n").encode(), private=False, overwrite=True)


def generate(
    out: Path,
    *,
    sites: Sequence[str],
    sans: Sequence[str] = (),
    signing_keys: Sequence[str] = ("publisher",),
    overwrite: bool = False,
) -> Path:
    """Create every file of the federation's trust setup under ``out``; return ``out``."""
    for site in sites:
        if not SITE_NAME.match(site):
            raise ValueError(
                f"site name {site!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    out.mkdir(parents=True, exist_ok=True)
    all_sans = list(dict.fromkeys([*DEFAULT_SANS, *sans]))
    ca_cert, ca_key = make_ca(out, overwrite=overwrite)
    make_server_cert(out, ca_cert, ca_key, all_sans, overwrite=overwrite)
    make_supernode_keys(out, sites, overwrite=overwrite)
    make_signing_keys(out, signing_keys, overwrite=overwrite)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("certs"), help="output folder (default: ./certs)")
    parser.add_argument("--sites", nargs="*", default=[], help="site names; one SuperNode key pair each")
    parser.add_argument(
        "--san", action="append", default=[],
        help="extra DNS name or IP address of the coordinator for the server certificate (repeatable)",
    )
    parser.add_argument(
        "--signing-key", action="append", default=None,
        help="name of an app-signing key pair to create (repeatable; default: publisher)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing keys and certificates")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate(
            args.out,
            sites=args.sites,
            sans=args.san,
            signing_keys=args.signing_key or ["publisher"],
            overwrite=args.overwrite,
        )
    except ValueError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
