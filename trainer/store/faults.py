"""botocore, s3transfer and urllib3 failures as the contract's errors, by class family.

Called once botocore's own retries are spent. Families rather than a list of classes, so that a
class a later botocore adds to a family lands where its family does, and never as exit 1:
- transient (75): the transport families botocore's standard retry mode itself treats as
  transient (`ConnectionError`: refused, connect timeout, DNS, proxy, TLS handshake;
  `HTTPClientError`: read timeout, connection closed or reset, a response cut short, anything
  urllib3 raised mid-request), the body-level ones it raises outside them (`IncompleteReadError`,
  `ChecksumError`: bytes lost or damaged in transit), a credentials or metadata service that did
  not answer (`CredentialRetrievalError`, `MetadataRetrievalError`), its retry quota running out
  (`CapacityNotAvailableError`), server-side 5xx, 429 and throttling codes, s3transfer's
  "retries exceeded" wrappers, and raw urllib3 or socket errors (ECONNRESET, timeouts) that
  escape a streaming read.
- configuration (2): a location or setting botocore rejects before sending anything
  (`ParamValidationError` such as an invalid bucket name, the rest of `ValidationError`, invalid
  config, endpoint rules, DNS-incompatible names): the same input fails the same way each time.
- refused (4): every other botocore error and every other `ClientError`. These are about
  credentials, permissions or local configuration that retrying cannot fix; a pod retried by the
  Job would fail the same way, so stopping is cheaper than six restarts.
Anything that is not a storage error at all (a local `FileNotFoundError`, a bug) is returned as
it is: the caller re-raises it.
"""

from __future__ import annotations

import builtins
import socket

import urllib3.exceptions
from boto3.exceptions import RetriesExceededError as Boto3RetriesExceeded
from botocore.exceptions import (
    BotoCoreError,
    CapacityNotAvailableError,
    ChecksumError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    EndpointProviderError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    InvalidConfigError,
    InvalidDNSNameError,
    InvalidS3AddressingStyleError,
    MetadataRetrievalError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ValidationError,
)
from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

from trainer.errors import ConfigError, StorageError, TransientError
from trainer.redaction import redact

TRANSIENT_BOTO = (ConnectionError, HTTPClientError, IncompleteReadError, ChecksumError,
                  FlexibleChecksumError, CredentialRetrievalError, MetadataRetrievalError,
                  CapacityNotAvailableError)
# Outside botocore's wrapping: what a streaming body or s3transfer can let through. Only the
# network kinds of OSError: a FileNotFoundError is the caller's business, not the network's.
TRANSIENT_RAW = (urllib3.exceptions.HTTPError, builtins.ConnectionError, TimeoutError,
                 socket.gaierror)
RETRIES_EXCEEDED = (Boto3RetriesExceeded, TransferRetriesExceeded)
MALFORMED = (ParamValidationError, ValidationError, InvalidConfigError, InvalidDNSNameError,
             InvalidS3AddressingStyleError, EndpointProviderError)
# botocore's standard retry mode retries these codes and statuses (botocore.retries.standard);
# when they are still there after its retries, the service is busy or down, not refusing.
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                   "RequestTimeoutException", "PriorRequestNotComplete", "Throttling",
                   "ThrottlingException", "RequestThrottled", "TooManyRequestsException",
                   "RequestLimitExceeded", "BandwidthLimitExceeded", "OperationAborted",
                   "RequestTimeTooSkewed",
                   # A multipart upload whose CompleteMultipartUpload got through but whose answer
                   # was cut: botocore's retry of it finds the upload gone. The object may or may
                   # not be there; uploading it again (a new multipart upload) is what mends it.
                   "NoSuchUpload"}
MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_missing(error: BaseException) -> bool:
    """A 404 of an object: not an error for readers that expect "maybe"."""
    return isinstance(error, ClientError) and error_code(error) in MISSING_CODES


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps: s3transfer and boto3 re-raise botocore errors inside their
    own, as the cause, the context or `last_exception`."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = (getattr(current, "last_exception", None) or current.__cause__
                   or current.__context__)
    return seen


def _is_transient_client_error(error: ClientError) -> bool:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return error_code(error) in TRANSIENT_CODES or status >= 500 or status == 429


def storage_error(error: BaseException, where: str, endpoint: str | None,
                  bucket_level: bool = False) -> BaseException:
    """The contract's error for a failure at `where` (an s3:// URI), or `error` itself when it is
    not a storage failure. Messages never carry a secret: the endpoint and botocore's own text
    are redacted."""
    if isinstance(error, OSError) and not isinstance(error, (BotoCoreError, *TRANSIENT_RAW)):
        return error  # a local file's problem (the uploader relies on FileNotFoundError)
    place = redact(f"{where} at {endpoint or 'AWS S3'}")
    for cause in _chain(error):
        found = _classify(cause, place, where, bucket_level)
        if found is not None:
            return found
    if any(isinstance(cause, RETRIES_EXCEEDED) for cause in _chain(error)):
        return TransientError(f"S3 transfer of {place} failed after retries; check "
                              "S3_ENDPOINT_URL and the network")
    return error


def _classify(error: BaseException, place: str, where: str,
              bucket_level: bool) -> Exception | None:
    name = type(error).__name__
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(f"no usable S3 credentials for {place}; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE or a role")
    if isinstance(error, (*TRANSIENT_BOTO, *TRANSIENT_RAW)):
        return TransientError(f"S3 endpoint unreachable for {place} after retries ({name}); "
                              "check S3_ENDPOINT_URL and the network")
    if isinstance(error, MALFORMED):
        detail = redact(str(error).replace("\n", " "))
        return ConfigError(f"{redact(where)} is not a valid S3 location ({detail}); fix the URI")
    if isinstance(error, ClientError):
        code = error_code(error)
        if _is_transient_client_error(error):
            return TransientError(f"S3 is unavailable for {place} ({code}); retry later")
        if code == "NoSuchBucket" or (code in MISSING_CODES and bucket_level):
            return StorageError(f"bucket of {place} does not exist; create it or fix the URI")
        if code in CREDENTIAL_CODES:
            return StorageError(f"S3 refused the credentials for {place} ({code}); check "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        return StorageError(f"S3 refused {place} ({code or 'error'}); check the credentials "
                            "and the bucket's permissions for them")
    if isinstance(error, BotoCoreError):
        detail = redact(str(error).replace("\n", " "))
        return StorageError(f"S3 client failed for {place} ({name}: {detail}); check the S3 "
                            "settings and credentials")
    return None
