"""The LLM two-modes findings are computed from the tables and say when a claim fails."""

from __future__ import annotations

import pandas as pd

from tvlens.viz.findings import modes_sentences


def _share(h: float, n: float) -> pd.DataFrame:
    rows = []
    for layer in range(4):
        for set_, v in (("heldout_known", h), ("novel", n)):
            rows.append({"layer": layer, "set": set_, "level": "states", "share": v,
                         "random_share": 0.01})  # fmt: skip
    return pd.DataFrame(rows)


def _ablation(hk: float, nk: float) -> pd.DataFrame:
    rows = [{"set": s, "condition": c, "drop": d}
            for s, c, d in (("heldout_known", "known_subspace", hk), ("heldout_known", "random_subspace", 0.0),
                            ("novel", "known_subspace", nk), ("novel", "random_subspace", 0.0))]  # fmt: skip
    return pd.DataFrame(rows)


def test_supported_and_not_supported_follow_the_numbers():
    good = modes_sentences(
        {"llm_modes_share": _share(0.4, 0.1), "llm_modes_ablation": _ablation(0.3, 0.0)}
    )
    assert good[0].startswith("Supported") and "0.4" in good[0] and "100 %" in good[0]
    assert good[1].startswith("Supported") and "0.3" in good[1]
    bad = modes_sentences(
        {"llm_modes_share": _share(0.1, 0.6), "llm_modes_ablation": _ablation(0.0, 0.2)}
    )
    assert bad[0].startswith("Not supported") and "0.6" in bad[0] and "0 %" in bad[0]
    assert bad[1].startswith("Not supported")


def test_steering_sentence_names_a_mixture_or_a_switch():
    alphas = [0.0, 0.5, 1.0]

    def table(mid: float) -> pd.DataFrame:
        rows = [
            {"condition": "task_vector_mix", "alpha": a, "p_a": p}
            for a, p in zip(alphas, [0.0, mid, 1.0], strict=True)
        ]
        rows += [{"condition": "output_mix", "alpha": a, "p_a": a} for a in alphas]
        return pd.DataFrame(rows)

    assert "a mixture" in modes_sentences({"llm_convex_steering": table(0.5)})[0]
    assert "closer to a switch" in modes_sentences({"llm_convex_steering": table(1.0)})[0]


def test_shares_the_surface_control_explains_are_not_a_test():
    table = _share(0.1, 0.6)
    table["shuffled_share"] = table["share"] + 0.01
    text = modes_sentences({"llm_modes_share": table})
    assert any(t.startswith("Not a test of the claim") for t in text)
    assert any(t.startswith("Surface control") for t in text)
