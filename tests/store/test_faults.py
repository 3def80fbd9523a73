"""What each botocore / s3transfer / urllib3 failure means for the job: exit 2, 4 or 75.

Exception objects are built here the way botocore builds them; the same mapping is exercised
end to end through real faults in test_s3.py."""

from __future__ import annotations

import inspect

import botocore.exceptions as boto
import pytest
import urllib3.exceptions
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

from trainer.errors import ConfigError, StorageError, TrainerError, TransientError
from trainer.store.faults import storage_error

WHERE, ENDPOINT = "s3://bucket/runs/best.h5", "http://user:s3cr3t@127.0.0.1:9000"


def _client_error(code: str, status: int) -> boto.ClientError:
    return boto.ClientError({"Error": {"Code": code, "Message": "m"},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _raised_inside(outer: type[Exception], inner: Exception) -> Exception:
    """`outer` raised while handling `inner`, as boto3's upload_file does."""
    try:
        try:
            raise inner
        except Exception:
            raise outer("Failed to upload")  # noqa: B904 - implicit chaining, as boto3 does
    except Exception as error:
        return error


URL = "http://127.0.0.1:9/bucket/key"
TRANSIENT = {
    "read timeout": boto.ReadTimeoutError(endpoint_url=URL, error="timed out"),
    "connect timeout": boto.ConnectTimeoutError(endpoint_url=URL, error="timed out"),
    "refused": boto.EndpointConnectionError(endpoint_url=URL, error="refused"),
    "closed": boto.ConnectionClosedError(endpoint_url=URL, error="reset"),
    "body cut": boto.ResponseStreamingError(
        error=urllib3.exceptions.ProtocolError("Connection broken", ConnectionResetError())),
    "short body": boto.IncompleteReadError(actual_bytes=1, expected_bytes=2),
    "credentials service": boto.CredentialRetrievalError(provider="container-role",
                                                         error_msg="unreachable"),
    "other urllib3 error": boto.HTTPClientError(error=urllib3.exceptions.NewConnectionError(
        None, "x")),
    "urllib3 raw": urllib3.exceptions.ReadTimeoutError(None, URL, "timed out"),
    "socket reset": ConnectionResetError(104, "reset"),
    "socket timeout": TimeoutError("timed out"),
    "s3transfer retries": TransferRetriesExceeded(TimeoutError("timed out")),
    "boto3 retries": RetriesExceededError(boto.ReadTimeoutError(endpoint_url=URL, error="x")),
    "500": _client_error("InternalError", 500),
    "502": _client_error("502", 502),
    "503": _client_error("ServiceUnavailable", 503),
    "504": _client_error("GatewayTimeout", 504),
    "slow down": _client_error("SlowDown", 503),
    "request timeout": _client_error("RequestTimeout", 400),
    "throttled": _client_error("TooManyRequests", 429),
    "upload wrapping 503": _raised_inside(S3UploadFailedError, _client_error("SlowDown", 503)),
    "multipart completed, answer cut": _raised_inside(S3UploadFailedError,
                                                      _client_error("NoSuchUpload", 404)),
}
REFUSED = {
    "access denied": _client_error("AccessDenied", 403),
    "no bucket": _client_error("NoSuchBucket", 404),
    "bad key id": _client_error("InvalidAccessKeyId", 403),
    "no credentials": boto.NoCredentialsError(),
    "upload wrapping 403": _raised_inside(S3UploadFailedError, _client_error("AccessDenied", 403)),
}
MALFORMED = {
    "bucket name": boto.ParamValidationError(report='Invalid bucket name "bad!name"'),
    "unknown parameter": boto.UnknownParameterError(name="x", operation="y", choices="z"),
}


@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_failures_are_exit_75(case: str) -> None:
    error = storage_error(TRANSIENT[case], WHERE, ENDPOINT)
    assert isinstance(error, TransientError) and error.exit_code == 75, error
    assert WHERE in str(error) and "s3cr3t" not in str(error) and "***@127.0.0.1" in str(error)


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_are_exit_4(case: str) -> None:
    error = storage_error(REFUSED[case], WHERE, ENDPOINT)
    assert isinstance(error, StorageError) and error.exit_code == 4, error
    assert WHERE in str(error) and "s3cr3t" not in str(error)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_locations_are_exit_2_naming_the_uri(case: str) -> None:
    error = storage_error(MALFORMED[case], WHERE, ENDPOINT)
    assert isinstance(error, ConfigError) and error.exit_code == 2, error
    assert str(error).startswith(f"{WHERE} is not a valid S3 location")


def test_every_botocore_error_class_maps_to_an_exit_code_not_1() -> None:
    """A class a later botocore adds inherits its family's code; none falls through to exit 1."""
    classes = [c for _, c in inspect.getmembers(boto, inspect.isclass)
               if issubclass(c, (boto.BotoCoreError, boto.ClientError))]
    assert len(classes) > 80
    for cls in classes:
        error = cls.__new__(cls)  # no constructor arguments: the mapping reads only the class
        if isinstance(error, boto.ClientError):
            error.response = {}
        mapped = storage_error(error, WHERE, None)
        assert isinstance(mapped, TrainerError) and mapped.exit_code in (2, 4, 75), cls


def test_the_transport_families_are_what_botocore_retries() -> None:
    """The families the mapping keys on, as the installed botocore defines them."""
    assert issubclass(boto.ReadTimeoutError, boto.HTTPClientError)
    assert issubclass(boto.ConnectionClosedError, boto.HTTPClientError)
    assert issubclass(boto.ResponseStreamingError, boto.HTTPClientError)
    assert issubclass(boto.ConnectTimeoutError, boto.ConnectionError)
    assert issubclass(boto.EndpointConnectionError, boto.ConnectionError)
    from botocore.retries.standard import TransientRetryableChecker

    assert set(TransientRetryableChecker._TRANSIENT_EXCEPTION_CLS) == {
        boto.ConnectionError, boto.HTTPClientError}


def test_local_file_errors_are_not_storage_errors() -> None:
    """The uploader relies on FileNotFoundError for a file removed after it was queued."""
    missing = _raised_inside(FileNotFoundError, _client_error("SlowDown", 503))
    assert storage_error(missing, WHERE, None) is missing
    bug = ValueError("a bug")
    assert storage_error(bug, WHERE, None) is bug
