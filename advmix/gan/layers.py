"""Which W+ layers carry the label and which carry nuisances: measured by swapping them.

For a set S of layers, take random pairs (a, b), build mix(a, b, 1, S) (a with b's layers in S)
and read all three images with the attribute probe:
- label change: how often the probe's label for the mix differs from its label for a;
- <attribute> transfer: among the pairs where a and b differ in the attribute, how often the mix
  takes b's value.
A good nuisance set has a low label change and a high transfer. `auto` picks, among contiguous
layer ranges, the one with the highest spurious-attribute transfer (ties: the mean transfer of all
nuisances) whose label change, with partners drawn from anyone, stays under the threshold.
The noise inputs are fixed (const) so that only the swapped layers differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from advmix.mixing import layer_groups, mix


def read(G, probe, ws, batch: int = 256) -> dict[str, np.ndarray]:
    """Probe class indices per head for the images of W+ codes `ws`."""
    import torch

    from advmix.probes import predict

    with torch.no_grad():
        imgs = torch.cat([G.synthesis(c, noise_mode="const") for c in ws.split(batch)])
    return {k: v.argmax(1) for k, v in predict(probe, imgs).items()}


def pick_partners(labels: np.ndarray, rule: str, rng: np.random.Generator) -> np.ndarray:
    """A partner index for every example: anyone else, or someone else with the same label."""
    n = len(labels)
    partners = np.empty(n, dtype=int)
    for i in range(n):
        pool = np.flatnonzero(labels == labels[i]) if rule == "same_label" else np.arange(n)
        pool = pool[pool != i]
        partners[i] = rng.choice(pool) if len(pool) else i
    return partners


def swap_scores(G, probe, ws, reading: dict[str, np.ndarray], partners: np.ndarray, layers: list[int]
                ) -> dict[str, float]:
    """Label change and per-attribute transfer of swapping `layers` from partners into ws."""
    mixed = read(G, probe, mix(ws, ws[partners], 1.0, layers))
    out = {"label_change": float(np.mean(mixed["label"] != reading["label"]))}
    for head, values in reading.items():
        if head == "label":
            continue
        differs = values != values[partners]
        moved = mixed[head][differs] == values[partners][differs]
        out[f"{head}_transfer"] = float(moved.mean()) if differs.any() else float("nan")
    return out


def candidate_sets(n_latent: int) -> dict[str, list[int]]:
    return {f"{i}-{j}": list(range(i, j + 1)) for i in range(n_latent) for j in range(i, n_latent)}


def analyze(G, probe, ws, spurious: str, layers_spec, partners_rule: str, max_label_change: float, seed: int,
            labels: np.ndarray | None = None, progress=None) -> dict[str, Any]:
    """The full analysis over a bank of W+ codes (generated or inverted), in the metrics/layers.json schema.

    `labels` are the true labels of the bank (inverted real images); for generated codes the probe's
    reading stands in for them.
    """
    from advmix.mixing import resolve_layers

    rng = np.random.default_rng(seed)
    reading = read(G, probe, ws)
    labels = reading["label"] if labels is None else labels
    any_partner = pick_partners(labels, "any", rng)
    rule_partner = pick_partners(labels, partners_rule, rng)

    singles = {str(i): [i] for i in range(G.n_latent)}
    groups = {k: v for k, v in layer_groups(G.size).items() if v}
    table = {}
    for name, layers in {**singles, **groups}.items():
        table[name] = swap_scores(G, probe, ws, reading, any_partner, layers)
        if progress:
            progress(1)

    key = f"{spurious}_transfer"
    candidates = {}
    for name, layers in candidate_sets(G.n_latent).items():
        candidates[name] = swap_scores(G, probe, ws, reading, any_partner, layers)
        if progress:
            progress(1)

    def nuisance_mean(scores: dict[str, float]) -> float:
        return float(np.nanmean([v for k, v in scores.items() if k.endswith("_transfer")]))

    allowed = {k: v for k, v in candidates.items() if v["label_change"] <= max_label_change}
    if allowed:
        best = max(allowed, key=lambda k: (np.nan_to_num(allowed[k][key]), nuisance_mean(allowed[k])))
    else:  # nothing keeps the label: take the set that changes it least
        best = min(candidates, key=lambda k: candidates[k]["label_change"])
    auto = candidate_sets(G.n_latent)[best]

    chosen = auto if layers_spec == "auto" else resolve_layers(layers_spec, G.size)
    rule_scores = swap_scores(G, probe, ws, reading, rule_partner, chosen)
    any_scores = swap_scores(G, probe, ws, reading, any_partner, chosen)
    return {
        "layers": table,
        "auto": auto,
        "auto_candidates": candidates,
        "perturbation": {
            "layers": chosen, "partners": partners_rule, "spurious": spurious,
            "label_change": rule_scores["label_change"], "spurious_transfer": rule_scores[key],
            "any_partner": {"label_change": any_scores["label_change"], "spurious_transfer": any_scores[key]},
            "all": rule_scores,
        },
        "n_pairs": len(ws),
    }


def heatmap(result: dict[str, Any]):
    """Rows: single layers and groups; columns: label change, then each attribute's transfer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["layers"])
    cols = list(result["layers"][rows[0]])
    data = np.array([[result["layers"][r][c] for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 0.38 * len(rows) + 1.5))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace("_transfer", "") for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"W+ {r}" if r.isdigit() else r for r in rows])
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
    ax.set_title(f"Swapping W+ layers: label change vs attribute transfer (auto = {result['auto']})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return fig
