"""The commands that train and analyse: ``tvlens demo``, ``train``, ``experiment NAME``, ``sweep``.

Experiments run the registered analyses (:mod:`tvlens.registry`) on the models they train and
write their across-run tables and figures; the analyses themselves live in
:mod:`tvlens.analyses`.
"""
