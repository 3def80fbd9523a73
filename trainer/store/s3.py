"""S3-compatible object storage (AWS S3, Ceph, R2, MinIO...) on boto3.

Retries are botocore's (standard mode); multipart uploads and concurrent downloads are
s3transfer's. An S3 PUT replaces an object whole, so readers see the old version or the new one.
What a failure means for the job (exit 2, 4 or 75) is decided in trainer.store.faults.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import boto3
from botocore.config import Config

from trainer.errors import ConfigError, DataError
from trainer.redaction import redact
from trainer.store.faults import is_missing, storage_error
from trainer.store.keys import local_path
from trainer.store.mirror import (
    MARKERS,
    MIRROR_CONCURRENCY,
    S3Object,
    cache_lock,
    mirror,
)
from trainer.store.stores import Progress


class ClientLimits(NamedTuple):
    """How long one request may wait (seconds) and how often botocore retries it: its
    `retries.max_attempts`, the retries after the first try."""

    connect_timeout: float = 10
    read_timeout: float = 120
    max_attempts: int = 6


DEFAULT_LIMITS = ClientLimits()
# check_writable at start: a wrong endpoint or bucket should fail in seconds, not minutes.
QUICK_LIMITS = ClientLimits(connect_timeout=3, read_timeout=10, max_attempts=2)


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def custom_endpoint(endpoint_url: str | None) -> str | None:
    """The endpoint in use when it is not AWS: ours, or the one boto3 reads itself."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")


def client_config(endpoint_url: str | None, addressing_style: str, *, quick: bool = False,
                  limits: ClientLimits = DEFAULT_LIMITS) -> Config:
    """botocore configuration: standard retries, and for a custom endpoint checksums only when
    required (boto3 >= 1.36 sends CRC checksums that many S3-compatible stores reject)."""
    if quick:
        limits = ClientLimits(min(limits.connect_timeout, QUICK_LIMITS.connect_timeout),
                              min(limits.read_timeout, QUICK_LIMITS.read_timeout),
                              min(limits.max_attempts, QUICK_LIMITS.max_attempts))
    checksums = "when_required" if custom_endpoint(endpoint_url) else "when_supported"
    return Config(
        retries={"mode": "standard", "max_attempts": limits.max_attempts},
        connect_timeout=limits.connect_timeout,
        read_timeout=limits.read_timeout,
        # One connection per concurrent download, or urllib3 drops and reopens them.
        max_pool_connections=MIRROR_CONCURRENCY,
        s3={"addressing_style": addressing_style},
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )


def make_client(endpoint_url: str | None, addressing_style: str, *, quick: bool = False,
                limits: ClientLimits = DEFAULT_LIMITS) -> Any:
    """A boto3 S3 client; endpoint_url=None lets boto3 apply AWS_ENDPOINT_URL_S3 and
    AWS_ENDPOINT_URL itself."""
    try:
        return boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url,
            config=client_config(endpoint_url, addressing_style, quick=quick, limits=limits))
    except ValueError:  # botocore's "Invalid endpoint: ..."
        raise ConfigError(f"S3 endpoint {redact(str(endpoint_url))} is not a valid URL; check "
                          "S3_ENDPOINT_URL") from None


class S3Store:
    """Runs under s3://bucket[/prefix]; keys are relative to it. Fulfils trainer.store.stores.Store.

    `limits` bounds each request (the job keeps the defaults; tests pass short timeouts)."""

    def __init__(self, uri: str, endpoint_url: str | None = None, addressing_style: str = "auto",
                 *, limits: ClientLimits = DEFAULT_LIMITS) -> None:
        self.uri = uri
        self.bucket, self.prefix = split_uri(uri)
        self.endpoint_url = endpoint_url
        self.endpoint = custom_endpoint(endpoint_url)
        self.client = make_client(endpoint_url, addressing_style, limits=limits)
        self._quick = (endpoint_url, addressing_style, limits)

    @functools.cached_property
    def _quick_client(self) -> Any:
        """check_writable's client; made when needed (a client takes a tenth of a second)."""
        endpoint_url, addressing_style, limits = self._quick
        return make_client(endpoint_url, addressing_style, quick=True, limits=limits)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _raise(self, error: Exception, key: str = "", bucket_level: bool = False) -> NoReturn:
        """The contract's error for `error`; anything that is no storage failure (a bug, a
        local file gone) as it is. Callers catch Exception: s3transfer and boto3 wrap botocore's
        errors in their own types."""
        where = f"s3://{self.bucket}/{self._key(key)}".rstrip("/")
        mapped = storage_error(error, where, self.endpoint, bucket_level)
        if mapped is error:
            raise error
        raise mapped from None

    def check_writable(self) -> None:
        """Bucket reachable, credentials valid and writes allowed: a probe object put, then
        deleted, with few retries so a wrong setting fails in seconds."""
        probe = self._key(".trainer-write-check")
        try:
            self._quick_client.head_bucket(Bucket=self.bucket)
            self._quick_client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._quick_client.delete_object(Bucket=self.bucket, Key=probe)
        except Exception as error:
            self._raise(error, bucket_level=True)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as error:
            if is_missing(error):
                return None
            self._raise(error, key)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from `start` (one ranged GET)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key),
                                          Range=f"bytes={start}-{start + length - 1}")[
                                              "Body"].read()
        except Exception as error:
            self._raise(error, key)

    def open_stream(self, key: str) -> Any:
        """The object's body, to read front to back (a botocore StreamingBody)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as error:
            self._raise(error, key)

    def put_file(self, key: str, path: Path, progress: Progress | None = None, *,
                 quick: bool = False) -> None:
        """s3transfer uploads big files in parts; S3 shows the object only once whole.
        `progress(bytes)` is s3transfer's callback as parts go (negative when one is retried);
        `quick`: the client with few retries and short timeouts."""
        try:
            client = self._quick_client if quick else self.client
            client.upload_file(str(path), self.bucket, self._key(key), Callback=progress)
        except Exception as error:
            self._raise(error, key)

    def get_file(self, key: str, path: Path, progress: Progress | None = None) -> bool:
        """s3transfer writes a temporary file beside `path` and renames it when complete."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(path), Callback=progress)
        except Exception as error:
            if is_missing(error):
                return False
            self._raise(error, key)
        return True

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as error:
            self._raise(error, key)

    def list_objects(self, prefix: str) -> list[dict[str, Any]]:
        """Objects under `prefix` (relative to this store): Key (relative), Size, ETag."""
        base = len(self._key("")) if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix))
            return [{"Key": item["Key"][base:], "Size": item["Size"],
                     "ETag": item.get("ETag", "")}
                    for page in pages for item in page.get("Contents", [])]
        except Exception as error:
            self._raise(error, prefix)

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(item["Key"] for item in self.list_objects(prefix))

    def list_runs(self) -> list[str]:
        base = self._key("")
        base = base if base.endswith("/") or not base else base + "/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/")
            runs = [p["Prefix"][len(base):].rstrip("/")
                    for page in pages for p in page.get("CommonPrefixes", [])]
        except Exception as error:
            self._raise(error)
        return sorted(r for r in runs if r and not r.startswith("."))

    def local_run_dir(self, run_id: str) -> Path | None:
        """None: a run's files are written in WORK_DIR first, then uploaded."""
        return None


def list_uri(uri: str, endpoint_url: str | None = None, addressing_style: str = "auto"
             ) -> list[str]:
    """The object names under an s3:// prefix, relative to it and sorted: what a worker picks its
    share from before `download_uri(..., select=...)`."""
    return sorted(o.key for o in _listing(uri, endpoint_url, addressing_style)[1])


def download_uri(uri: str, cache: Path, endpoint_url: str | None = None,
                 addressing_style: str = "auto", *, select: Callable[[str], bool] | None = None,
                 limits: ClientLimits = DEFAULT_LIMITS, concurrency: int = MIRROR_CONCURRENCY,
                 progress_seconds: float = 10.0) -> Path:
    """An s3:// object or prefix mirrored into `cache/<bucket>/<key>`; returns that local path.

    For a prefix, the local folder mirrors it: objects gone from the bucket are removed, objects
    unchanged since the last call (same ETag and size, local file untouched) are kept, the rest
    are downloaded `concurrency` at a time. `select(name)` (name relative to the prefix, e.g.
    `train/part-3.tfrecord`) limits the download to the objects a worker reads; objects it
    leaves out are neither fetched nor removed. Keys that would leave the folder (`/x`, `a/../x`)
    raise DataError; unreachable storage TransientError, a malformed URI ConfigError."""
    store, objects, folder = _listing(uri, endpoint_url, addressing_style, limits)
    if not objects:
        raise DataError(f"{uri} holds no objects; check the URI (an .npz object, or a prefix "
                        "of images or TFRecords)")
    exact = folder is None
    base = cache / store.bucket
    if folder is None:  # one object, mirrored into its parent folder without pruning it
        local_path(base, objects[0].key)  # refuses a key that would leave the cache
        parent = os.path.dirname(objects[0].key)
        folder = parent + "/" if parent else ""
        objects = [o._replace(key=o.key[len(folder):]) for o in objects]
    wanted = [o for o in objects if exact or select is None or select(o.key)]
    root = local_path(base, folder) if folder else base
    markers = cache / MARKERS / store.bucket / root.relative_to(base)
    with cache_lock(cache):
        mirror(store.client, store.bucket, folder, root, markers, objects, wanted,
               endpoint=store.endpoint, concurrency=concurrency,
               progress_seconds=progress_seconds, prune=not exact)
    return local_path(root, objects[0].key) if exact else root


def _listing(uri: str, endpoint_url: str | None, addressing_style: str,
             limits: ClientLimits = DEFAULT_LIMITS) -> tuple[S3Store, list[S3Object], str | None]:
    """The store, the objects (keys relative to the folder) and the folder of `uri`; the folder
    is None when `uri` names one object exactly."""
    bucket, key = split_uri(uri)
    if bucket in ("", ".", ".."):
        raise ConfigError(f"{redact(uri)} names no bucket; give s3://bucket/key")
    store = S3Store(f"s3://{bucket}", endpoint_url, addressing_style, limits=limits)
    listing = store.list_objects(key)
    exact = [S3Object(o["Key"], o["Size"], o["ETag"]) for o in listing if o["Key"] == key]
    if exact:
        return store, exact, None
    folder = key + "/" if key else ""
    return store, [S3Object(o["Key"][len(folder):], o["Size"], o["ETag"]) for o in listing
                   if o["Key"].startswith(folder) and not o["Key"].endswith("/")], folder
