"""The sample corpus: real image–caption pairs rendered from openly licensed art in the package
registries (see :mod:`cliplab.data.corpus.build` for the layout and the splits).

* :mod:`~cliplab.data.corpus.sources`: where the art lives and what is missing;
* :mod:`~cliplab.data.corpus.install`: installing it (apt-get, ``npm pack``);
* :mod:`~cliplab.data.corpus.emoji`, :mod:`~cliplab.data.corpus.openclipart`: reading each kind of
  art and writing its captions;
* :mod:`~cliplab.data.corpus.render`: rasterising to square PNGs;
* :mod:`~cliplab.data.corpus.build`: items, splits, licences, the build itself.
"""

from .build import CorpusSummary, build_sample_corpus, read_corpus_split
from .sources import SOURCES, SPLITS, CorpusSourcesError, find_sources, missing_sources

__all__ = [
    "SOURCES",
    "SPLITS",
    "CorpusSourcesError",
    "CorpusSummary",
    "build_sample_corpus",
    "find_sources",
    "missing_sources",
    "read_corpus_split",
]
