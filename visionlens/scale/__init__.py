"""Scale-out: the same dataset sweeps and benchmark cells on a Ray cluster, with the same results.

``visionlens.run(name, model, images, backend="ray", address=None, **config)`` runs a checkpointable
sweep (``activation_stats``, ``dataset_examples``) as a Ray Data pipeline
(:mod:`visionlens.scale.ray_backend`); shard planning, committed shard files and merging are in
:mod:`visionlens.scale.shards`. Ray itself is optional (``pip install 'visionlens[ray]'``) and is
imported only when a Ray run starts.
"""

from .shards import ShardImages, ShardStore, merge_shards, plan_shards

__all__ = ["ShardImages", "ShardStore", "merge_shards", "plan_shards"]
