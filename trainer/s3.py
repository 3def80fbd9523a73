"""S3-compatible object storage (AWS S3, Ceph, R2, MinIO...) on boto3.

Retries are botocore's (standard mode); multipart uploads are s3transfer's. An S3 PUT replaces an
object whole, so readers see the old version or the new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.errors import StorageError, TransientError
from trainer.storage import Store

TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "500",
                   "502", "503", "504", "RequestTimeTooSkewed"}
MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def custom_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint in use when it is not AWS: ours, or the one boto3 reads itself."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")


def client_config(endpoint_url: str | None, addressing_style: str, *, quick: bool = False) -> Any:
    """botocore configuration: standard retries, and for a custom endpoint checksums only when
    required (boto3 >= 1.36 sends CRC checksums that many S3-compatible stores reject)."""
    from botocore.config import Config

    checksums = "when_required" if custom_endpoint(endpoint_url) else "when_supported"
    return Config(
        retries={"mode": "standard", "max_attempts": 2 if quick else 6},
        connect_timeout=3 if quick else 10,
        read_timeout=10 if quick else 120,
        s3={"addressing_style": addressing_style},
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )


def make_client(endpoint_url: str | None, addressing_style: str, *, quick: bool = False) -> Any:
    import boto3

    # endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL itself.
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url,
        config=client_config(endpoint_url, addressing_style, quick=quick))


def storage_error(error: Exception, where: str, endpoint: str | None,
                  bucket_level: bool = False) -> Exception:
    """A boto error as the contract's error: 4 when refused, 75 when unreachable or busy."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    place = f"{where} at {endpoint or 'AWS S3'}"
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"no usable S3 credentials for {place}; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE or a role")
    if isinstance(error, ConnectionError):
        return TransientError(f"S3 endpoint unreachable for {place} after retries "
                              f"({type(error).__name__}); check S3_ENDPOINT_URL and the network")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in TRANSIENT_CODES:
            return TransientError(f"S3 is unavailable for {place} ({code}); retry later")
        if code == "NoSuchBucket" or (code in MISSING_CODES and bucket_level):
            return StorageError(f"bucket of {place} does not exist; create it or fix the URI")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken"):
            return StorageError(f"S3 refused the credentials for {place} ({code}); check "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return StorageError(f"S3 refused {place} ({code or 'error'}); check the credentials "
                            "and the bucket's permissions for them")
    return error


class S3Store(Store):
    def __init__(self, uri: str, endpoint_url: str | None = None,
                 addressing_style: str = "auto") -> None:
        self.uri = uri
        self.bucket, self.prefix = split_uri(uri)
        self.endpoint_url = endpoint_url
        self.endpoint = custom_endpoint(endpoint_url)
        self.client = make_client(endpoint_url, addressing_style)
        self._quick_client = make_client(endpoint_url, addressing_style, quick=True)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, error: Exception, key: str = "") -> Exception:
        return storage_error(error, f"s3://{self.bucket}/{self._key(key)}".rstrip("/"),
                             self.endpoint)

    def check_writable(self) -> None:
        """Bucket reachable, credentials valid and writes allowed: a probe object put, then
        deleted, with few retries so a wrong setting fails in seconds."""
        from botocore.exceptions import BotoCoreError, ClientError

        probe = self._key(".trainer-write-check")
        try:
            self._quick_client.head_bucket(Bucket=self.bucket)
            self._quick_client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._quick_client.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as error:
            raise storage_error(error, f"s3://{self.bucket}", self.endpoint,
                                bucket_level=True) from None

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in MISSING_CODES:
                return None
            raise self._error(error, key) from None
        except BotoCoreError as error:
            raise self._error(error, key) from None

    def put_file(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, key) from None
        except Exception as error:  # s3transfer wraps failures in its own exception types
            cause = error.__cause__ or error.__context__ or error
            if isinstance(cause, (BotoCoreError, ClientError)):
                raise self._error(cause, key) from None
            raise

    def get_file(self, key: str, path: Path) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.download")
        try:
            self.client.download_file(self.bucket, self._key(key), str(temporary))
        except ClientError as error:
            temporary.unlink(missing_ok=True)
            if str(error.response.get("Error", {}).get("Code")) in MISSING_CODES:
                return False
            raise self._error(error, key) from None
        except BotoCoreError as error:
            temporary.unlink(missing_ok=True)
            raise self._error(error, key) from None
        os.replace(temporary, path)
        return True

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, key) from None

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        """Objects under `prefix` (relative to this store): Key (relative), Size, ETag."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(prefix)
        objects = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    relative = item["Key"][len(self._key("")):] if self.prefix else item["Key"]
                    objects.append({"Key": relative, "Size": item["Size"],
                                    "ETag": item.get("ETag", "")})
        except (BotoCoreError, ClientError) as error:
            raise self._error(error, prefix) from None
        return objects

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(item["Key"] for item in self.list_objects(prefix))

    def list_runs(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        base = self._key("")
        base = base if base.endswith("/") or not base else base + "/"
        runs = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base, Delimiter="/"):
                prefixes = page.get("CommonPrefixes", [])
                runs += [p["Prefix"][len(base):].rstrip("/") for p in prefixes]
        except (BotoCoreError, ClientError) as error:
            raise self._error(error) from None
        return sorted(r for r in runs if r and not r.startswith("."))


def download_uri(uri: str, cache: Path, endpoint_url: str | None, addressing_style: str) -> Path:
    """An s3:// object or prefix mirrored into `cache`; unchanged objects (same ETag and size)
    are not downloaded again."""
    bucket, key = split_uri(uri)
    store = S3Store(f"s3://{bucket}", endpoint_url, addressing_style)
    objects = store.list_objects(key)
    exact = [o for o in objects if o["Key"] == key]
    if exact:
        objects, root = exact, cache / bucket / os.path.dirname(key)
    else:
        folder = key.rstrip("/") + "/" if key else ""
        objects = [o for o in objects if o["Key"].startswith(folder) and not o["Key"].endswith("/")]
        root = cache / bucket
    if not objects:
        from trainer.errors import DataError

        raise DataError(f"{uri} holds no objects; check the URI (an .npz object, or a prefix "
                        "of images or TFRecords)")
    for item in objects:
        target = cache / bucket / item["Key"]
        marker = target.with_name(f".{target.name}.etag")
        stamp = json.dumps({"etag": item["ETag"], "size": item["Size"]})
        if target.is_file() and marker.is_file() and marker.read_text() == stamp:
            continue
        store.get_file(item["Key"], target)
        marker.write_text(stamp)
    return cache / bucket / key if exact else root / key
