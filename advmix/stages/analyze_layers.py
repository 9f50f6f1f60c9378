"""analyze-layers: swap each W+ row (and each candidate set) between pairs of inverted train faces, measure how
often the probe's label changes and how often the spurious attribute moves, and pick the `auto` mixing set; then
measure the chosen set on the mixes training makes (with `train.residual`), in metrics/layers_as_trained.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advmix.inputs.data import dataset, pool_partners
from advmix.inputs.gan import generator, partner_bank, split_latents
from advmix.inputs.probe import probe
from advmix.stages import Progress, no_progress


@dataclass
class LayersAnalysed:
    result: dict[str, Any]  # metrics/layers.json
    as_trained: dict[str, Any]  # metrics/layers_as_trained.json
    warning: str | None  # set when no set meets the bar, as trained or at all, or the set swaps every row

    def summary(self) -> str:
        pert = self.result["perturbation"]
        return (f"auto layers {self.result['auto']}; perturbation set {pert['layers']} with "
                f"partners={pert['partners']}: label change {pert['label_change']:.3f}, {pert['spurious']} transfer "
                f"{pert['spurious_transfer']:.3f} (any partner: {pert['any_partner']['label_change']:.3f} / "
                f"{pert['any_partner']['spurious_transfer']:.3f}); on inverted real faces: label change "
                f"{pert['real']['label_change']:.3f}, transfer {pert['real']['spurious_transfer']:.3f}; as trained "
                f"(residual {'on' if self.as_trained['residual'] else 'off'}): label change "
                f"{self.as_trained['label_change']:.3f}, transfer {self.as_trained['spurious_transfer']:.3f}")


def run(p, progress: Progress = no_progress) -> LayersAnalysed:
    import numpy as np
    import torch

    from advmix import paths
    from advmix.figures import save_figure
    from advmix.files import atomic_write_json
    from advmix.gan.layers import analyze, as_trained, candidate_sets, heatmap, perturbation_on_bank, read
    from advmix.mixing import layer_groups

    ds = dataset(p)
    G, _ = generator(ds)
    probe_model = probe()
    # measured on inverted real training faces, which is what training mixes: a small generator draws its own
    # samples' mouths less clearly than it reconstructs real ones, so on generated pairs the probe's label noise
    # hides a set that keeps the label on real faces (rows 0-1 of the 32 px default: label change 0.23 on
    # generated pairs, 0.06 on inverted real ones)
    train = ds.split("train")
    bank = split_latents(ds, "train", G)  # NaN or Inf rows refused
    rows = np.random.default_rng(p.seed).permutation(len(bank))[: p.mixing.analysis_pairs]
    ws, labels = torch.from_numpy(bank[rows]), train.manifest["label"].to_numpy()[rows]
    partners = None  # mixing.bank train: the partners are the other train faces of the analysis
    if p.mixing.bank != "train":
        codes, classes = partner_bank(p, ds, G, bank)
        partners = (torch.from_numpy(codes), classes)
        partner_images = pool_partners(p).images
    greedy = G.n_latent * (G.n_latent + 1) // 2  # at most; the search usually stops after a few rows
    total = G.n_latent + len(layer_groups(G.size)) + len(candidate_sets(G.n_latent)) + greedy
    with progress("analyze-layers", total) as step:
        result = analyze(G, probe_model, ws, ds.info["spurious"], p.mixing.layers, p.mixing.partners,
                         p.mixing.max_label_change, p.mixing.min_transfer, p.seed, labels=labels, progress=step,
                         bank=partners)
        step(completed=total)
    result["source"] = "inverted real train faces"
    if partners is not None:
        result["partner_bank"] = "pool"
    held = slice(result["n_search"], None)  # the half the search did not read
    result["perturbation"]["real"] = perturbation_on_bank(
        G, probe_model, ws[held], labels[held], ds.info["spurious"], result["perturbation"]["layers"],
        p.mixing.partners, p.seed, bank=partners)
    # the same set on generated samples, for comparison
    gen = torch.Generator().manual_seed(p.seed)
    with torch.no_grad():
        ws_gen = G.make_ws(torch.randn(p.mixing.analysis_pairs, G.style_dim, generator=gen))
    result["perturbation"]["generated"] = perturbation_on_bank(
        G, probe_model, ws_gen, read(G, probe_model, ws_gen)["label"], ds.info["spurious"],
        result["perturbation"]["layers"], p.mixing.partners, p.seed)
    # the same set and pairs on the mixes training makes, with and without the residual
    pert = result["perturbation"]
    held_images = train.images[rows[held]]
    composed = as_trained(G, probe_model, ws[held], held_images, labels[held], pert["spurious"], pert["layers"],
                          p.mixing.partners, p.seed, bank=None if partners is None else (*partners, partner_images))
    trained = {**composed[p.train.residual], "layers": pert["layers"], "spurious": pert["spurious"],
               "partners": p.mixing.partners, "measured_on": "held-out half",
               "other_residual": composed[not p.train.residual]}
    atomic_write_json(paths.LAYERS_METRICS, result)
    atomic_write_json(paths.LAYERS_AS_TRAINED, trained)
    save_figure(heatmap(result), paths.LAYERS_FIGURE)
    warnings = [bar_warning(result["bar"], pert["spurious"]),
                as_trained_warning(trained, result["bar"]),
                whole_code_warning(pert["layers"], G.n_latent, pert["partners"])]
    return LayersAnalysed(result, trained, "; ".join(w for w in warnings if w) or None)


def bar_warning(bar: dict[str, Any], spurious: str) -> str | None:
    """One line when no W+ row set meets mixing.max_label_change and mixing.min_transfer: the best set, its
    figures and the bar (metrics/layers.json records it as bar.met, and the report states it first)."""
    if bar["met"]:
        return None
    return (f"no W+ row set meets the bar (label change <= {bar['max_label_change']:.0%}, {spurious} transfer >= "
            f"{bar['min_transfer']:.0%}): the best, W+ {bar['auto']}, changes the label in {bar['label_change']:.1%} "
            f"of swaps and moves {spurious} in {bar['spurious_transfer']:.1%} of the pairs that differ in it "
            f"({bar['measured_on']}); AdvMix will rarely move {spurious}")


def as_trained_warning(trained: dict[str, Any], bar: dict[str, Any]) -> str | None:
    """One line when the set meets the bar on the generator's images but not on the mixes training makes."""
    if not bar["met"] or (trained["label_change"] <= bar["max_label_change"]
                          and trained["spurious_transfer"] >= bar["min_transfer"]):
        return None
    other = trained["other_residual"]
    fix = ("inversion leaves part of it in the residual x - G(w_x), which every mix adds back; "
           f"without the residual {other['spurious_transfer']:.1%} (label change {other['label_change']:.1%}): "
           "train.residual: false moves it more, but then the generator redraws the label's detail too, which "
           "can cost more than it gains (docs/results.md)" if trained["residual"] else "")
    return (f"as training makes them (train.residual: {str(trained['residual']).lower()}), the mixes of W+ "
            f"{','.join(map(str, trained['layers']))} change the label in {trained['label_change']:.1%} and move "
            f"{trained['spurious']} in {trained['spurious_transfer']:.1%} of the pairs that differ in it, below the "
            f"bar ({bar['max_label_change']:.0%}, {bar['min_transfer']:.0%}){'; ' + fix if fix else ''}")


def whole_code_warning(layers: list[int], n_latent: int, partners: str) -> str | None:
    """A perturbation set that swaps every W+ row is not a nuisance change: say so (colordigits at 2,500 iterations
    did this, and AdvMix then had no effect)."""
    if len(set(layers)) < n_latent:
        return None
    what = "another image of the same class" if partners == "same_label" else "the partner's image, label included"
    return (f"the perturbation set swaps all {n_latent} W+ rows, so a hard mix is {what}, not a nuisance change: "
            "this generator has not put the spurious attribute in rows of its own (train it longer, or raise "
            "gan.style_mixing), and AdvMix cannot target it")
