"""Real C2PA manifests for tests, made here: a throwaway ES256 chain from ``cryptography`` and
``c2pa-python``'s Builder. Nothing is fetched; every run signs its own images.

The chain follows what the C2PA specification asks of a claim signer (and what c2pa-rs
checks): a CA root, and a leaf with the digitalSignature key usage and the emailProtection
extended key usage.
"""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SIGNER_CN = "Kite Labs Test Signer"
SIGNER_ORG = "Kite Labs"
GENERATOR = "kite-image-api"


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def _usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Chain:
    root_pem: bytes
    chain_pem: bytes  # leaf then root
    key_pem: bytes


def make_chain() -> Chain:
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("Throwaway Test Root", "Throwaway Test CA")
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False)
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(SIGNER_CN, SIGNER_ORG))
        .issuer_name(root_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Chain(
        root_pem=root.public_bytes(pem),
        chain_pem=leaf.public_bytes(pem) + root.public_bytes(pem),
        key_pem=leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def png(color: tuple[int, int, int] = (200, 40, 30), size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def sign(
    chain: Chain,
    image: bytes,
    *,
    fmt: str = "image/png",
    source_type: str = "trainedAlgorithmicMedia",
    ingredient: bytes | None = None,
) -> bytes:
    """``image`` with an embedded, signed manifest: one c2pa.created action carrying the IPTC
    digital source type, as an image API would sign its output."""
    import c2pa

    manifest: dict[str, Any] = {
        "claim_generator_info": [{"name": GENERATOR, "version": "2.1"}],
        "title": "output.png",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": IPTC + source_type,
                            "softwareAgent": {"name": "FLUX.2 [pro]"},
                        }
                    ]
                },
            }
        ],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain.chain_pem, chain.key_pem, None)
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest) as builder:
        if ingredient is not None:
            builder.add_ingredient(
                {"title": "reference.png", "relationship": "inputTo"},
                "image/png",
                io.BytesIO(ingredient),
            )
        out = io.BytesIO()
        builder.sign(signer, fmt, io.BytesIO(image), out)
        return out.getvalue()


def tamper(signed: bytes) -> bytes:
    """Change one byte of the pixel data after signing (the manifest itself untouched)."""
    at = signed.index(b"IDAT") + 8
    return signed[:at] + bytes([signed[at] ^ 0xFF]) + signed[at + 1 :]


def truncate_manifest(signed: bytes) -> bytes:
    """Cut the PNG's caBX (C2PA) chunk in half, keeping the image a PNG by its magic bytes."""
    start = signed.index(b"caBX") - 4
    length = int.from_bytes(signed[start : start + 4], "big")
    return signed[: start + 8 + length // 2]
