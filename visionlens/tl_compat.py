"""Keep TransformerLens 3.x habits working on TransformerLens 4.x.

TL 4 renamed ``transformer_lens.utils`` to ``transformer_lens.utilities``. Notebooks written for
TL habits still do ``from transformer_lens import utils`` / ``utils.get_act_name(...)``; once
visionlens is imported, that name resolves to the new module (only if TL itself lacks it).
"""

from __future__ import annotations

import importlib
import sys


def install() -> None:
    import transformer_lens

    if "utils" in vars(transformer_lens) or "transformer_lens.utils" in sys.modules:
        return
    try:
        importlib.import_module("transformer_lens.utils")
        return
    except ImportError:  # TL 4 raises ImportError from its module __getattr__ for the old name
        pass
    utilities = importlib.import_module("transformer_lens.utilities")
    sys.modules["transformer_lens.utils"] = utilities
    setattr(transformer_lens, "utils", utilities)
