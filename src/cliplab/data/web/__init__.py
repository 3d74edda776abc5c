"""From web pages to training shards.

* :mod:`.extract`: image-caption pairs from saved HTML pages, WARC and WAT files and URL lists
  (``cliplab data extract``), parsed by :mod:`.html` and :mod:`.warc`;
* :mod:`.robots`: robots.txt, ``X-Robots-Tag`` and robots meta tags;
* :mod:`.fetch`: fetching one URL politely and safely (asyncio + aiohttp);
* :mod:`.resize`: sniffing, guarding, decoding near the target size, resizing, encoding;
* :mod:`.writer`: crash-safe shards (a journal per shard, then write aside, fsync, rename);
* :mod:`.download`: a URL list into WebDataset shards (``cliplab data download``);
* :mod:`.curate`: keeping pairs by CLIP score, size and aspect ratio, removing exact and near
  duplicates (``cliplab data filter``);
* :mod:`.distributed`: extraction and download over a Ray cluster.

The caption rules are :mod:`cliplab.data.captions`. Nothing here is imported by ``import cliplab``;
the network and Arrow dependencies load when a function needs them.
"""
