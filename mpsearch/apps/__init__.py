"""The applications: what users run on top of the three stages.

``cli`` (the ``mpsearch`` command), ``report`` (the HTML report), ``profile`` (:func:`mpsearch.profile`: the local
tier, sharding and the end-to-end tier composed), ``pipeline`` (the embedded defaults and the folder loader),
``evaluate`` (scoring a plan on held-out seeds), ``evidence`` (which seeds serve what), ``demo`` and ``testing``
(tiny and real-size random-weight pipelines built from configs, for tests and benchmarks).
"""
