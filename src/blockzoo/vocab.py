"""The fixed vocabularies the tools share, importable without torch.

``FAMILIES`` (an entry's family, checked by ``registry.register``) and ``FORMATS``
(how ``bench.report`` renders a table) are also what the command line offers as
``--family`` and ``--format`` choices; the parser is built from torch-free modules
only (``blockzoo --help`` answers in a fraction of a second), so these live here
and ``registry`` and ``bench.report`` re-export them.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "FORMATS"]

FAMILIES = ("attention", "mlp", "rep", "conv", "recurrent", "model")

FORMATS = ("table", "markdown", "csv", "json")
