"""Values that name a place or a size: a local path, `file://` or `s3://` location (any other
scheme refused), and a size in bytes as Kubernetes writes quantities. Parsers for options.py."""

from __future__ import annotations

import re
import urllib.parse

from trainer.errors import ConfigError


def invalid(variable: str, value: str, expected: str) -> ConfigError:
    return ConfigError(f"{variable}={value!r} is invalid: {expected}")


# A `scheme:` prefix (`s3:/x`, `S3://x`, `http://x`): read as a local path it would name a
# folder after the typo, which a run would fill and exit 0.
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def location(variable: str, text: str, forms: str) -> str:
    """A local path, `file://` URI (given back as its path) or `s3://bucket/key` URI; any
    other `scheme:` form is a ConfigError naming the variable and the accepted `forms`."""
    value = text.strip()
    if not value:
        raise invalid(variable, text, "it must not be empty")
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise invalid(variable, text, "the bucket name after s3:// must be 3-63 characters of "
                          "a-z, 0-9, '.' and '-'")
        return value
    if value.startswith("file://"):
        parsed = urllib.parse.urlsplit(value)
        if parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
            return urllib.parse.unquote(parsed.path)
    elif not SCHEME.match(value):
        return value
    vertex = " (gs:// is read on Vertex AI alone, through its Cloud Storage FUSE mount)" if (
        value.lower().startswith("gs:")) else ""
    raise invalid(variable, text, f"give {forms}; s3:// in lower case, no other scheme{vertex}")


_BYTE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def size_in_bytes(variable: str, text: str) -> int:
    """A size: bytes, or with a unit as Kubernetes writes them (500M, 20Gi, 1.5T; a trailing B
    is allowed)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not found or int(float(found[1]) * _BYTE_UNITS[found[2] or ""]) < 1:
        raise invalid(variable, text, "give a size in bytes >= 1, e.g. 50000000000, 50G or 40Gi")
    return int(float(found[1]) * _BYTE_UNITS[found[2] or ""])
