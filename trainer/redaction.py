"""Secrets out of text before it is logged, stored or shown: `redact(text)`.

Two shapes of secret travel inside settings such as S3_ENDPOINT_URL or DATASET_MIRROR:
- credentials in a URL's authority, `https://user:token@host/...`. The whole user-info part
  becomes `***` (`https://***@host/...`), the user name too: schemes such as
  `https://TOKEN@github.com` or `x-access-token:...` put the secret in the user name.
- secret-looking parameters, `?X-Amz-Signature=...&token=...` in a presigned URL, or
  `password=...` in free text: the value becomes `***`, the name stays so the reader knows
  what was there.
Anything else passes through unchanged, and redacting twice changes nothing more.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@host: the user-info runs up to the last "@" before the path, query, fragment
# or the end of the URL (a password holding a raw "@" is hidden whole). Quotes, brackets and
# white space are not URL characters, so they end it: the host of one URL never swallows text
# that follows it.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s\"'<>@]*"
                       r"(?:@[^/?#\s\"'<>@]*)*@")

# Parameter names whose values are secrets, case-insensitive: AWS SigV2/SigV4 presigned URLs,
# Azure SAS (`sig`), OAuth, and the usual password words. `key` alone is left out: log fields
# such as `key=run/best.h5` name objects, not secrets.
SECRET_NAMES = (
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature",
    "awsaccesskeyid", "sig", "token", "access_token", "refresh_token", "id_token",
    "security_token", "session_token", "password", "passwd", "pwd", "secret", "client_secret",
    "api_key", "apikey", "api-key", "private_key", "auth", "authorization",
    "aws_secret_access_key", "aws_session_token",
)
# A name not glued to a longer word (so `mytoken=` is not a `token=`), then `=` or `: `, then the
# value up to a separator: `&` `;` `#` `,` white space, quotes or brackets; an HTTP scheme word
# (`Authorization: Bearer ...`) goes with its value.
_PARAMETER = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<name>" + "|".join(re.escape(n) for n in SECRET_NAMES) + r")"
    r"(?P<sep>=|:\s?)(?P<value>(?:(?:Bearer|Basic|AWS4-HMAC-SHA256)\s+)?"
    r"[^&;#,\s\"'<>()\[\]{}]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL credentials and secret-looking parameter values replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _PARAMETER.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
