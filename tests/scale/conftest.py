"""One local Ray instance for the whole test session (``num_cpus=2``), shared by the Ray test modules.

Under ``pytest -n 2 --dist loadgroup`` (``make test``) every Ray test is in the xdist group ``"ray"``, so
they run on one worker and start Ray once. Skipped tests never start it.
"""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """The GCS address of a local Ray instance (started here unless Ray is already initialised)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'visionlens[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
