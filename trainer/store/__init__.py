"""Where runs are kept: a local folder or S3-compatible object storage.

Owns: the `Store` protocol and the local store (`stores`), S3 (`s3`), botocore errors mapped to
exit codes (`faults`), prefixes mirrored to a folder (`mirror`), keys confined to their folder
(`keys`), the background uploader (`uploader`), atomic local writes and digests (`files`), a
run's files and their order (`artifacts`), and why a run stopped unfinished (`failures`).

May import: `trainer.errors`, `logs`, `ticker`, `redaction`, `settings`; never the recipe
modules above it, and no TensorFlow (boto3 is imported inside the functions that use it).
"""
