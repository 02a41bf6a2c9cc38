"""The synthetic SUPERB-lite corpus: eSpeak NG speech with labels for every SUPERB task.

``synthesize(out_dir, size, seed)`` writes it; see :mod:`speechssl.data.synth.corpus`
for the build, :mod:`.plan` for what it holds and :mod:`.manifests` for the layout.
"""

from speechssl.data.synth.corpus import synthesize
from speechssl.data.synth.plan import SIZES

__all__ = ["SIZES", "synthesize"]
