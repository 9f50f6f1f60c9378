"""validate: the Great Expectations suites on the prepared dataset (advmix.validate); the report is written
whether or not they pass, and a failed expectation then stops the stage (exit 1)."""

from __future__ import annotations

from dataclasses import dataclass

from advmix.inputs.data import dataset
from advmix.stages import StageError


@dataclass
class Validated:
    report: object  # advmix.validate.ValidationReport: success, evaluated, failures, agreement per split
    spurious: str  # the attribute whose agreement with the label each split targets

    def summary(self) -> str:
        lines = [f"  {split:14s} agreement(label, {self.spurious}) = {value:.4f}"
                 for split, value in self.report.agreement.items()]
        return "\n".join(lines + [f"validation passed: {self.report.evaluated} expectations"])

    def failures(self) -> list[str]:
        """One line per failed expectation (none when the data passed)."""
        from advmix.validate import meaning

        return [f"FAILED {f.name}: {meaning(f.name)} ({f.expectation}{', column ' + f.column if f.column else ''}): "
                f"observed {f.observed}" for f in self.report.failures]


def run(p) -> Validated:
    from advmix import paths
    from advmix.data.store import dataset_digest
    from advmix.validate import run_suites, write_outputs

    ds = dataset(p, validated=False)
    report = run_suites(ds, p)
    write_outputs(report, ds.info, dataset_digest(paths.dataset_dir(p.data.name)))
    done = Validated(report, ds.info["spurious"])
    if failed := done.failures():  # after the outputs: the report says what failed, and later stages refuse the data
        raise StageError(f"data validation failed: {len(failed)} of {report.evaluated} expectations: "
                         f"{'; '.join(failed)}; see {paths.validation_page()}")
    return done
