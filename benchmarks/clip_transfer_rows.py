"""Score one CLIP row of the transfer table on any zoo CLIP directly (also models that are not table columns,
such as ``zoo:clip_vit``): the trained model, then its randomized copy graded the same way, and the sanity check.

    OMP_NUM_THREADS=1 python benchmarks/clip_transfer_rows.py clip_vit full max_activating_text
    OMP_NUM_THREADS=1 python benchmarks/clip_transfer_rows.py clip_glyph quick multimodal_units
"""

import json
import sys
import time

from visionlens.zoo import catalog
from visionlens.zoo import techniques_clip as tc
from visionlens.zoo.scores import sanity_check
from visionlens.zoo.technique import BenchContext

name = sys.argv[1]
quick = sys.argv[2] == "quick"
which = sys.argv[3]
e = catalog.get_entry(name)
m = catalog.load(name)
rm = catalog.load(name, pretrained=False)
tech = {t.name: t for t in tc.TECHNIQUES}[which]
print(tech.supports(m, e))
t0 = time.time()
s = tech.score(m, BenchContext(entry=e, quick=quick))
t1 = time.time()
rs = tech.score(rm, BenchContext(entry=e, quick=quick, randomized=True))
t2 = time.time()
d = {
    k: v
    for k, v in s.details.items()
    if k
    in (
        "interval",
        "baselines",
        "hit_rate_by_tower",
        "fraction_of_max",
        "fraction_of_max_random",
        "constant_text",
        "joint_ranks",
    )
}
print(s.score, s.chance, round(s.normalized, 3), json.dumps(d)[:1500])
print("random copy:", rs.score, round(rs.normalized, 3), rs.details["interval"], sanity_check(s, rs))
print(f"{t1 - t0:.1f} s trained, {t2 - t1:.1f} s random")
