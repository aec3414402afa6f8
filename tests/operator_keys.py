"""The operator's RSA key pair for encryption tests, written as PEM files."""

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """An operator's RSA key pair as PEM files: (public, private)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = directory / f"{name}.pub.pem"
    private = directory / f"{name}.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return public, private
