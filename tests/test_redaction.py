"""Secrets never leave the job in logs, artifacts or messages: trainer.redaction.redact."""

from __future__ import annotations

import pytest

from trainer.redaction import redact

CASES = {
    # credentials in a URL: the whole user-info goes, the user name too
    "http://user:tok3n@minio.local:9000/bucket": "http://***@minio.local:9000/bucket",
    "https://ghp_T0KEN@github.com/org/repo": "https://***@github.com/org/repo",
    "https://u:p@ss@host/x": "https://***@host/x",  # a raw "@" in the password
    "S3_ENDPOINT_URL=http://ak:sk@127.0.0.1:9 failed":
        "S3_ENDPOINT_URL=http://***@127.0.0.1:9 failed",
    'connect to "https://a:b@h/p", then "https://c:d@i/q"':
        'connect to "https://***@h/p", then "https://***@i/q"',
    # secret-looking parameters: the value goes, the name stays
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026"
    "&X-Amz-Signature=abc123&X-Amz-Security-Token=FwoG&x-id=GetObject":
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
        "&X-Amz-Signature=***&X-Amz-Security-Token=***&x-id=GetObject",
    "https://acct.blob.core.windows.net/c/f?sv=2024&sig=Zm9v%3D&se=2026":
        "https://acct.blob.core.windows.net/c/f?sv=2024&sig=***&se=2026",
    "https://mirror/data.npz?token=s3cr3t#frag": "https://mirror/data.npz?token=***#frag",
    "password=hunter2 api_key=k1, AWS_SECRET_ACCESS_KEY=wJal":
        "password=*** api_key=***, AWS_SECRET_ACCESS_KEY=***",
    "Authorization: Bearer eyJhbGci.x.y": "Authorization: ***",
}
UNCHANGED = [
    "s3://bucket/runs/best.h5",
    "http://127.0.0.1:9000/bucket/key",
    "key=run/best.h5 mytoken=visible tokens=3",  # log fields and words that merely contain one
    "mail someone@example.com about http://host/path@v2",
    "DATASET=/data/cats@2x ready",
]


@pytest.mark.parametrize("text", list(CASES))
def test_secrets_are_hidden(text: str) -> None:
    assert redact(text) == CASES[text]


@pytest.mark.parametrize("text", UNCHANGED)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("text", [*CASES, *UNCHANGED])
def test_redacting_twice_changes_nothing_more(text: str) -> None:
    assert redact(redact(text)) == redact(text)
