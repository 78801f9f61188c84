"""Parquet modular encryption with a key of our own: the KMS client that wraps Parquet's data
keys with the master key, and the file encryption and decryption properties built on it."""

from __future__ import annotations

import base64
import secrets

import pyarrow.parquet.encryption as pe

from tenant_pipelines.core.backups.keys import MASTER_KEY_ID, key_fingerprint
from tenant_pipelines.errors import BackupKeyMissing
from tenant_pipelines.settings import BACKUP_KEY_ENV


class LocalKmsClient(pe.KmsClient):
    """A KMS client that wraps the data keys Parquet generates with our master key (AES-256-GCM,
    the key id as associated data). The wrapped keys live in each file's footer; the master
    key never does."""

    def __init__(self, master_key: bytes) -> None:
        super().__init__()
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(master_key)

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, key_bytes, master_key_identifier.encode())
        return base64.b64encode(nonce + sealed).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        raw = base64.b64decode(wrapped_key)
        return self._aead.decrypt(raw[:12], raw[12:], master_key_identifier.encode())


def crypto_factory(master_key: bytes) -> pe.CryptoFactory:
    """Parquet's CryptoFactory with ``LocalKmsClient`` (a pyarrow dataset's decryption config needs it)."""
    return pe.CryptoFactory(lambda _config: LocalKmsClient(master_key))


def encryption_properties(master_key: bytes) -> pe.FileEncryptionProperties:
    config = pe.EncryptionConfiguration(
        footer_key=MASTER_KEY_ID, uniform_encryption=True, encryption_algorithm="AES_GCM_V1",
        double_wrapping=True, data_key_length_bits=256, plaintext_footer=False,
    )
    return crypto_factory(master_key).file_encryption_properties(pe.KmsConnectionConfig(), config)


def decryption_properties(master_key: bytes) -> pe.FileDecryptionProperties:
    """For ``pq.ParquetFile(path, decryption_properties=...)`` and ``pq.read_table``."""
    return crypto_factory(master_key).file_decryption_properties(pe.KmsConnectionConfig())


def backup_decryption(manifest: dict, master_key: bytes | None) -> pe.FileDecryptionProperties | None:
    """What opens the files of the backup ``manifest`` describes: None for a cleartext backup,
    else ``master_key``'s decryption properties. No key, or a key with another fingerprint than
    the manifest's, is a one-line BackupKeyMissing."""
    encryption = manifest["encryption"]
    if not encryption.get("enabled"):
        return None
    if master_key is None:
        raise BackupKeyMissing(
            f"tenant {manifest['tenant']}: backup {manifest['backup_id']} is encrypted and no backup key is "
            f"configured; set ${BACKUP_KEY_ENV} (key fingerprint {encryption['master_key_fingerprint']})"
        )
    if key_fingerprint(master_key) != encryption["master_key_fingerprint"]:
        raise BackupKeyMissing(
            f"tenant {manifest['tenant']}: backup {manifest['backup_id']} was encrypted with another key "
            f"(fingerprint {encryption['master_key_fingerprint']}, the configured one is "
            f"{key_fingerprint(master_key)}); set ${BACKUP_KEY_ENV} to the key it was written with"
        )
    return decryption_properties(master_key)
