"""Where --workdir points: refused at once when it cannot be a folder, explained when its bucket
is missing.

A local path whose first existing part is a file cannot hold a workdir (os.makedirs would
fail mid-mode with FileExistsError). An object store has no folders to check up front, and a
missing bucket shows as a bare URL in whatever request fails first; `missing_bucket` is asked
only after such a failure, so that a bucket the credentials may write but not describe
(storage.buckets.get) never refuses a run.
"""

from cm.io import fileio


def check(workdir: str):
    """Raises one sentence when a local --workdir, or a folder above it, is an existing file."""
    if fileio.is_remote(workdir):
        return
    p = fileio.local_absolute(workdir)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                where = "is" if part == p else f"is inside {part}, which is"
                raise ValueError(
                    f"--workdir={workdir} {where} an existing file, not a folder; pass a folder "
                    "path (new or existing), e.g. --workdir=runs/demo."
                )
            return


def bucket_of(workdir: str) -> str | None:
    """'gs://bucket' of 'gs://bucket/runs/demo'; None for a local path."""
    p = str(fileio.path(workdir))
    if not fileio.is_remote(p):
        return None
    scheme, _, rest = p.partition("://")
    return f"{scheme}://{rest.split('/')[0]}"


def missing_bucket(workdir: str, error: BaseException) -> str | None:
    """After `error` on an object-store workdir: one sentence when its bucket does not exist or
    cannot be reached (the error's first line kept), else None."""
    bucket = bucket_of(workdir)
    if bucket is None:
        return None
    try:
        if fileio.exists(bucket):
            return None
        why = "does not exist"
    except Exception as e:  # noqa: BLE001 - credentials, network: all mean "not reachable"
        why = f"is not reachable ({_first_line(e)})"
    create = f"gcloud storage buckets create {bucket}" if bucket.startswith("gs://") else "its CLI"
    return (
        f"the bucket {bucket} of --workdir={workdir} {why} (what failed: "
        f"{_first_line(error)}); create it ({create}) or name an existing bucket in --workdir."
    )


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]
