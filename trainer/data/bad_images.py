"""BAD_IMAGES: what broken images do to a run. They are left out and named in one warning
(`skip`), or they end it with a DataError naming them (`fail`, exit 3).

    report_bad_images(source, scan.bad, "skip")          # found by the folder scan, at start
    apply_bad_images_policy(take_decode_failures(), "skip", run_id)   # found while decoding

At most BAD_IMAGES_NAMED of them are named in a log line or an error (config.json lists them
all). No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainer.data.folders import BadImage
from trainer.errors import DataError
from trainer.logs import get_logger

BAD_IMAGES_NAMED = 20  # in a log line or an error; config.json lists them all


def _named(items: Sequence[object]) -> str:
    """The first BAD_IMAGES_NAMED of `items`, and how many more."""
    named = "; ".join(str(item) for item in items[:BAD_IMAGES_NAMED])
    more = f" and {len(items) - BAD_IMAGES_NAMED} more" if len(items) > BAD_IMAGES_NAMED else ""
    return named + more


def report_bad_images(source: str, bad: list[BadImage], policy: str) -> None:
    """Broken image files: a DataError naming them (BAD_IMAGES=fail), else one log line naming
    the first BAD_IMAGES_NAMED of them."""
    if not bad:
        return
    if policy == "fail":
        raise DataError(f"DATASET={source}: {len(bad)} broken image file(s): {_named(bad)}; "
                        "remove or replace them, or set BAD_IMAGES=skip to leave them out")
    get_logger().warning(f"DATASET={source}: left out {len(bad)} broken image file(s): "
                         f"{_named(bad)}", extra={"bad_images": len(bad)})


def apply_bad_images_policy(names: list[str], policy: str, run_id: str = "") -> list[str]:
    """Images found broken while decoding: a DataError naming them (BAD_IMAGES=fail), else a
    warning naming the first few; returns `names`."""
    if not names:
        return names
    if policy == "fail":
        raise DataError(f"DATASET: {len(names)} image(s) failed to decode: {_named(names)}; "
                        "remove or replace them, or set BAD_IMAGES=skip to leave them out")
    get_logger().warning(f"left out {len(names)} image(s) that failed to decode: "
                         f"{_named(names)}", extra={"run_id": run_id, "bad_images": len(names)})
    return names
