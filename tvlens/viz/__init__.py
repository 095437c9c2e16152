"""Plotly figures, attention views and the offline HTML report."""
