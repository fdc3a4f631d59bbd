"""The CLI's quick transfer table per family, run once per worker process for the tests that read it.

``test_cli_quick_table_every_family`` (tests/zoo/test_bench_transfer.py) runs ``visionlens bench transfer --quick``
on one family per test. A few other tests check cells that table scores anyway (the ResNet localization rows, the
diffusion UNet's style-neuron row); they read the table's folder instead of scoring those cells a second time. Each
such family is an xdist group (:data:`TABLE_GROUPS`), so under ``pytest -n 2 --dist loadgroup`` its table and its
readers run on one worker, which scores the table once; run alone, a reader scores the table itself.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable, Dict

import pytest

# Every technique runs on one family per input layout (conv maps, tokens, CLIP, UNet), with the randomized
# copy. The costliest two, whose code does not depend on the conv family (a feature-visualization render; a
# dictionary on per-position map vectors), are left out of the other conv families to keep the suite's time, and
# those families score the trained model only (their randomized copies are checked in tests/zoo/test_randomize.py);
# every other technique still runs on every family.
EVERY_TECHNIQUE_FAMILIES = {"resnet", "vit", "clip", "diffusion"}
LAYOUT_AGNOSTIC_COSTLY = {"feature_visualization", "unit_feature_visualization", "dictionary_features"}

# families whose table other tests read: table and readers in one xdist group
TABLE_GROUPS = {family: pytest.mark.xdist_group(f"{family}_table") for family in ("resnet", "diffusion")}


def cli_quick_table(family: str, out: Path) -> tuple[int, list[str], str]:
    """``visionlens bench transfer --quick --families FAMILY`` into ``out``: (exit code, techniques, stdout)."""
    from visionlens.cli import main
    from visionlens.zoo import bench

    techs = sorted(t.name for t in bench.all_techniques())
    cmd = ["bench", "transfer", "--quick", "--families", family, "--out", str(out), "-q"]
    if family not in EVERY_TECHNIQUE_FAMILIES:
        techs = [t for t in techs if t not in LAYOUT_AGNOSTIC_COSTLY]
        cmd.append("--no-sanity")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(cmd + ["--techniques", ",".join(techs)])
    return code, techs, stdout.getvalue()


@pytest.fixture(scope="session")
def quick_table(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``quick_table(family)``: the folder of the CLI's quick table on ``family`` (``results.json``, the report,
    the CLI's stdout in ``stdout.txt``), scored on first use in this process. Only for the families of
    :data:`TABLE_GROUPS` (their readers share a worker)."""
    tables: Dict[str, Path] = {}

    def get(family: str) -> Path:
        assert family in TABLE_GROUPS, f"{family}: add it to TABLE_GROUPS so its readers share one worker"
        if family not in tables:
            out = tmp_path_factory.mktemp(f"{family}_table")
            code, _, stdout = cli_quick_table(family, out)
            assert code == 0, stdout
            (out / "stdout.txt").write_text(stdout)
            tables[family] = out
        return tables[family]

    return get
