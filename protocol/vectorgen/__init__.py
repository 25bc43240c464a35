"""The golden vectors' makers, one module per kind, for ``protocol/gen_vectors.py`` (which
puts ``python/`` on ``sys.path`` for the ``beambridge`` package before importing this).

* `frames`: frame vectors (SPEC §5, §6);
* `control`: control-frame vectors (SPEC §8);
* `terms`: data-term vectors (SPEC §9, §10);
* `term_json`: SPEC §14's term JSON and the ``error`` of a bad vector;
* `raw_etf`: ETF and control frames written by hand.
"""
