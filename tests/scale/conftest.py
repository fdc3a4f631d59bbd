"""One local Ray instance for the whole test session (``num_cpus=2``), shared by the Ray test modules.

Under ``pytest -n 2 --dist loadgroup`` (``make test``) every Ray test is in the xdist group ``"ray"``, so
they run on one worker and start Ray once. Skipped tests never start it.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """The GCS address of a local Ray instance (started here unless Ray is already initialised)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'visionlens[ray]')")
    started = not ray.is_initialized()
    if started:
        # Ray starts its workers at niceness 15 (to keep its own daemons responsive on a busy node): here every
        # actor and task then yields to the other xdist worker and to any other job, so the Ray group's worker
        # sits waiting while its actors starve (255 s instead of about 60 s for the killed-driver test on a
        # loaded 2-core machine). Ray's own job manager starts drivers with 0 the same way.
        saved = os.environ.get("RAY_worker_niceness")
        os.environ["RAY_worker_niceness"] = "0"  # read by the raylet that ray.init starts
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        finally:
            if saved is None:
                os.environ.pop("RAY_worker_niceness", None)
            else:
                os.environ["RAY_worker_niceness"] = saved
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
