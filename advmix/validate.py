"""Great Expectations suites for a dataset: the validate stage.

Two frames are validated: one row per image (the manifest plus per-image statistics and a
content hash computed into it) and one row per split (size, realised agreement between label
and spurious attribute, group balance). Every expectation carries a readable name in `meta`
so a failure says what broke, not only which GX class.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from advmix import paths
from advmix.data.splits import agreement_of
from advmix.data.store import Dataset, image_digests
from advmix.files import atomic_write_bytes, atomic_write_json
from advmix.groups import group_of
from advmix.params import ALL_SPLITS, POOL, Params

INT_TYPES = ["int64", "int32", "int16", "int8", "Int64"]


@dataclass
class Failure:
    name: str
    expectation: str
    column: str | None
    observed: Any


@dataclass
class ValidationReport:
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    agreement: dict[str, float] = field(default_factory=dict)
    raw: list[dict] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"success": self.success, "evaluated": self.evaluated, "failed": [f.name for f in self.failures],
                "rho_realised": self.agreement}


def image_frame(ds: Dataset) -> pd.DataFrame:
    """The manifest plus statistics of each image, in [0, 1]."""
    x = ds.images.reshape(len(ds.images), -1)
    frame = ds.manifest.copy()
    frame["img_mean"] = x.mean(1) / 255.0
    frame["img_std"] = x.std(1) / 255.0
    frame["img_min"] = x.min(1).astype(int)
    frame["img_max"] = x.max(1).astype(int)
    frame["img_saturated"] = ((x == 0) | (x == 255)).mean(1)
    frame["img_hash"] = image_digests(ds.images)
    frame["hash_splits"] = frame.groupby("img_hash")["split"].transform("nunique").astype(int)
    spur = ds.info.get("spurious")
    if {spur, "label"} <= set(frame.columns):  # the group Group DRO and worst-group accuracy read, as the data defines it
        # (a missing column is named by the required_columns expectation)
        frame["group_expected"] = group_of(frame["label"], frame[spur], len(ds.info["attributes"][spur]))
    return frame


def split_frame(ds: Dataset, params: Params) -> pd.DataFrame:
    """One row per split: size against params, agreement against its target, group balance; for the pool, how far
    label/spurious agreement is from what independence gives."""
    m, spur = ds.manifest, ds.info.get("spurious")
    sizes = params.data.sizes.as_dict()
    rows = []
    for split in ALL_SPLITS:
        part = m[m["split"] == split]
        row = {"split": split, "n": len(part), "expected_n": sizes[split], "agreement": np.nan,
               "agreement_error": 0.0, "group_share_error": 0.0, "independence_error": 0.0}
        if {"label", spur} <= set(m.columns) and len(part):
            row["agreement"] = float((part["label"] == part[spur]).mean())
            if split == POOL:  # the pool need not be balanced (celeba's is not), only free of the correlation:
                # its agreement should be what independent label and attribute give, sum_k P(y=k) P(s=k)
                # (0.5 for two balanced classes, 0.1 for colordigits' ten)
                p_label = part["label"].value_counts(normalize=True)
                p_spur = part[spur].value_counts(normalize=True)
                independent = float(sum(p_label.get(k, 0.0) * p_spur.get(k, 0.0) for k in p_label.index))
                row["independence_error"] = abs(row["agreement"] - independent)
                rows.append(row)
                continue
            target = agreement_of(split, params.data.rho)
            if target is not None:
                # a split of n images can only realise multiples of 1/n: allow that rounding on tiny splits
                slack = max(0.0, 0.5 / len(part) - params.validate_.rho_tolerance)
                row["agreement_error"] = max(0.0, abs(row["agreement"] - target) - slack)
            else:
                n_groups = ds.info["n_classes"] * len(ds.info["attributes"][spur])
                share = part.groupby(["label", spur]).size() / len(part)
                share = share.reindex(pd.MultiIndex.from_product(
                    [range(ds.info["n_classes"]), ds.info["attributes"][spur]]), fill_value=0.0)
                row["group_share_error"] = float(np.abs(share - 1.0 / n_groups).max())
        elif not {"label", spur} <= set(m.columns):
            row["agreement_error"] = row["group_share_error"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# what each failed expectation means, in words; `<attribute>_set` and `<attribute>_present` are spelled per attribute
MEANING = {
    "required_columns": "manifest.csv lacks a column",
    "unique_ids": "an image id is listed twice",
    "ids_present": "an image has no id",
    "split_names": "a split name is unknown",
    "label_type": "a label is not an integer",
    "label_set": "a label is outside 0..n_classes-1",
    "group_type": "a group is not an integer",
    "no_image_in_two_splits": "the same image is in several splits",
    "image_contrast": "images are too flat (pixel std below validate.min_pixel_std)",
    "image_brightness": "images are too dark or too bright (mean outside validate.mean_range)",
    "image_saturation": "images are saturated (share of 0/255 pixels above validate.max_saturated)",
    "rows_match_images": "manifest rows do not match images.npy (rows shuffled or images replaced)",
    "group_is_label_x_spurious": "a group is not label x spurious attribute",
    "split_sizes": "a split's size differs from data.sizes",
    "spurious_agreement_rho": "a split's label/spurious agreement is off data.rho by more than validate.rho_tolerance",
    "spurious_agreement_computable": "a split's label/spurious agreement cannot be computed",
    "balanced_groups": "a balanced split's groups are not equal in size (validate.balance_tolerance)",
    "pool_label_independent": "the pool's attribute is not independent of the label (validate.pool_tolerance)",
}


def meaning(name: str) -> str:
    """The failed expectation `name` in words."""
    if name in MEANING:
        return MEANING[name]
    attribute, _, kind = name.rpartition("_")
    return {"set": f"a {attribute} value is unknown", "present": f"a {attribute} value is missing"}.get(kind, name)


def _named(expectation, name: str):
    expectation.meta = {"name": name}
    return expectation


def image_expectations(info: dict[str, Any], params: Params, columns: list[str]) -> list:
    v = params.validate_
    attributes = info.get("attributes", {})
    required = ["id", "split", "label", "group", *attributes]
    exps = [
        _named(gxe.ExpectTableColumnsToMatchSet(column_set=required, exact_match=False), "required_columns"),
        _named(gxe.ExpectColumnValuesToBeUnique(column="id"), "unique_ids"),
        _named(gxe.ExpectColumnValuesToNotBeNull(column="id"), "ids_present"),
        _named(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(ALL_SPLITS)), "split_names"),
        _named(gxe.ExpectColumnValuesToBeInTypeList(column="label", type_list=INT_TYPES), "label_type"),
        _named(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(info["n_classes"]))),
               "label_set"),
        _named(gxe.ExpectColumnValuesToBeInTypeList(column="group", type_list=INT_TYPES), "group_type"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="hash_splits", min_value=1, max_value=1),
               "no_image_in_two_splits"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="img_std", min_value=v.min_pixel_std), "image_contrast"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="img_mean", min_value=v.mean_range[0],
                                                 max_value=v.mean_range[1]), "image_brightness"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="img_saturated", max_value=v.max_saturated),
               "image_saturation"),
    ]
    if "image_sha1" in columns:  # written by save_dataset: a row shuffled against its image is caught here
        exps.append(_named(gxe.ExpectColumnPairValuesToBeEqual(column_A="image_sha1", column_B="img_hash"),
                           "rows_match_images"))
    if info.get("spurious") in attributes:
        exps.append(_named(gxe.ExpectColumnPairValuesToBeEqual(column_A="group", column_B="group_expected"),
                           "group_is_label_x_spurious"))
    for name, values in attributes.items():
        exps.append(_named(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=values), f"{name}_set"))
        exps.append(_named(gxe.ExpectColumnValuesToNotBeNull(column=name), f"{name}_present"))
    return exps


def split_expectations(params: Params) -> list:
    v = params.validate_
    return [
        _named(gxe.ExpectColumnPairValuesToBeEqual(column_A="n", column_B="expected_n"), "split_sizes"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="agreement_error", min_value=0, max_value=v.rho_tolerance),
               "spurious_agreement_rho"),
        _named(gxe.ExpectColumnValuesToNotBeNull(column="agreement_error"), "spurious_agreement_computable"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="group_share_error", min_value=0,
                                                 max_value=v.balance_tolerance), "balanced_groups"),
        _named(gxe.ExpectColumnValuesToBeBetween(column="independence_error", min_value=0,
                                                 max_value=v.pool_tolerance), "pool_label_independent"),
    ]


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        details = result.get("details", {}).get("mismatched")
        return details if details else result["observed_value"]
    if "unexpected_count" in result:
        return {"unexpected_count": result["unexpected_count"],
                "examples": [str(x) for x in result.get("partial_unexpected_list", [])[:5]]}
    return "could not be evaluated (column missing?)"


def run_suites(ds: Dataset, params: Params) -> ValidationReport:
    """Run both suites through a Great Expectations ephemeral context."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_or_update_pandas(name="advmix")
    frames = {"images": image_frame(ds), "splits": split_frame(ds, params)}
    suites = {"images": image_expectations(ds.info, params, list(ds.manifest.columns)),
              "splits": split_expectations(params)}

    report = ValidationReport(success=True, evaluated=0)
    report.agreement = {r.split: r.agreement for r in frames["splits"].itertuples() if pd.notna(r.agreement)}
    for name, frame in frames.items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("whole")
        suite = gx.ExpectationSuite(name=f"{ds.info['name']}_{name}", expectations=suites[name])
        suite = ctx.suites.add_or_update(suite)
        vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        res = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        report.evaluated += res.statistics["evaluated_expectations"]
        report.success &= bool(res.success)
        report.raw.append(json.loads(json.dumps(res.describe_dict(), default=str)))
        for r in res.results:
            if not r.success:
                cfg = r.expectation_config
                report.failures.append(Failure(cfg.meta.get("name", cfg.type), cfg.type, cfg.kwargs.get("column"),
                                               _observed(r.result)))
    return report


def render_html(report: ValidationReport, info: dict[str, Any]) -> str:
    """A self-contained page (no CDN): GX's own Data Docs render unstyled offline."""
    rows = []
    for suite in report.raw:
        for e in suite["expectations"]:
            ok = e["success"]
            kw = {k: v for k, v in e["kwargs"].items() if k != "batch_id"}
            rows.append(f"<tr class={'ok' if ok else 'bad'}><td>{'pass' if ok else 'FAIL'}</td>"
                        f"<td>{html.escape(e['expectation_type'])}</td><td><code>{html.escape(json.dumps(kw))}</code>"
                        f"</td><td><code>{html.escape(json.dumps(e['result'])[:300])}</code></td></tr>")
    agree = "".join(f"<li>{s}: {a:.4f}</li>" for s, a in report.agreement.items())
    status = "passed" if report.success else f"FAILED ({len(report.failures)} expectations)"
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>advmix data validation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td{{border:1px solid #ccc;
padding:4px;font-size:13px}} tr.bad{{background:#fdd}} tr.ok td:first-child{{color:#070}}</style></head><body>
<h1>Data validation: {html.escape(info['name'])} {status}</h1>
<p>{report.evaluated} expectations evaluated. Realised agreement of label and <b>{html.escape(str(info.get('spurious')))}
</b> (target rho = {info.get('rho')}):</p><ul>{agree}</ul>
<table><tr><th>result</th><th>expectation</th><th>arguments</th><th>observed</th></tr>{''.join(rows)}</table>
</body></html>"""


def write_outputs(report: ValidationReport, info: dict[str, Any], data_sha1: str) -> None:
    """The GX results, their HTML page, and the metrics with `data_sha1` (store.dataset_digest of what was read)."""
    atomic_write_json(paths.validation_results(), report.raw)
    atomic_write_bytes(paths.validation_page(), render_html(report, info).encode())
    atomic_write_json(paths.validation_metrics(), report.metrics() | {"data_sha1": data_sha1})
