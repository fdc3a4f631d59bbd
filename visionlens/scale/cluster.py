"""Connecting to Ray and running independent jobs as Ray tasks (the transfer table's cells).

Ray is optional: it is imported when a function here is called, never at module import.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from visionlens.validation import VisionLensError

__all__ = ["ray_available", "ensure_ray", "map_on_ray"]

T = TypeVar("T")


def ray_available() -> bool:
    """Whether ``ray`` (with Ray Data) can be imported."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_ray(address: Optional[str] = None, **init_kwargs: Any) -> Any:
    """Import ray and connect: to ``address`` (``"auto"`` or ``"ray://host:10001"``) or a new local instance.

    An already initialised Ray is reused as it is. Returns the ``ray`` module.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise VisionLensError(
            "The ray backend needs Ray: pip install 'visionlens[ray]' (or 'ray[data]>=2.9')."
        ) from None
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        kw.update(init_kwargs)
        ray.init(address=address, **kw)
    return ray


def map_on_ray(
    fn: Callable[[Any], T], jobs: Sequence[Any], address: Optional[str] = None, num_cpus: float = 1.0
) -> Iterator[tuple[Any, T]]:
    """Run ``fn(job)`` for every job as a Ray task (retried if its worker dies); yields ``(job, result)`` as done."""
    ray = ensure_ray(address)
    remote = ray.remote(num_cpus=num_cpus, max_retries=3)(fn)
    pending = {remote.remote(job): job for job in jobs}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            job = pending.pop(ref)
            yield job, ray.get(ref)
