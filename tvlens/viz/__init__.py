"""Plotly figures of the analysis tables and the offline HTML report; viz never runs a model.

Each figure module (``training``, ``geometry``, ``steering``, ``paper``, ``decodability``,
``patching``, ``llm``, ``attention``) maps CSV stems to figure functions in ``FIGURES``;
:mod:`tvlens.registry` says which analysis writes which table and which module draws it.
``common`` holds the shared colours, the column check and :func:`~tvlens.viz.common.write_figures`;
``report`` writes one offline page per run directory; ``report_cmd`` is ``tvlens report``.
"""
