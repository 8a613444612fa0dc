"""Compare runs from MLflow: reports/runs.csv, runs.md (a Markdown table) and runs.png (a bar chart per metric).

    python stages/report.py                                   # every run of experiment 'genlab'
    python stages/report.py --dataset mnist --family vae      # filter on the runs' tags
    python stages/report.py --dvc-exp 'beta-%'                # % is a wildcard
    python stages/report.py --metrics 'test/*' val/elbo --out reports/mnist
    python stages/report.py --group                           # + groups.csv/md, verdicts.csv/md: seed replicates
    python stages/report.py --baseline vae.beta=1.0 --alpha 0.01  # each group against the vae.beta=1.0 one
    python stages/report.py --group --html                    # + runs.html: spreads, grids side by side, curves
Exits with status 2 and a message when no run matches, or the baseline selects no single group.
"""

import argparse
import os
from pathlib import Path

from genlab.core import paths
from genlab.core.errors import exit_on_error
from genlab.reporting.replicates import ALPHA
from genlab.reporting.report import DEFAULT_METRICS, EXPERIMENT, FILES, GROUP_FILES, build_report, to_markdown


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python stages/report.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "--experiment",
        default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT,
        help="MLflow experiment name (default: $MLFLOW_EXPERIMENT_NAME, else %(default)s)",
    )
    parser.add_argument("--dataset", help="only runs with tag genlab.dataset = DATASET (digits, mnist, ...)")
    parser.add_argument("--family", help="only runs with tag genlab.family = FAMILY (vae, ...)")
    parser.add_argument("--dvc-exp", help="only runs with tag dvc.exp_name = DVC_EXP (%% is a wildcard)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="METRIC",
        help=f"metric names or patterns (default: {' '.join(DEFAULT_METRICS)})",
    )
    parser.add_argument("--out", default=str(paths.REPORTS_DIR), help="output folder (default: %(default)s)")
    parser.add_argument(
        "--group",
        action="store_true",
        help="pool finished runs whose params differ only in seed: groups.csv/md (mean ± sd) and verdicts.csv/md",
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="KEY=VALUE",
        help="the group the others are compared with (implies --group; default: the group of the oldest run)",
    )
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help="significance level of the verdicts (default: %(default)s)"
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="also runs.html, one self-contained page (metrics with spreads, each run's sample and reconstruction "
        "grids, curves overlaid), logged with the other files to a run of MLflow experiment genlab-reports",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<main repo>/mlflow.db)",
    )
    return parser.parse_args(argv)


def run(argv=None) -> None:
    args = parse(argv)
    from genlab.tracking import store  # imported only when needed: it costs seconds (torchvision)

    uri = args.tracking_uri or store.tracking_uri()
    with store.store_errors(uri):
        table = build_report(
            uri,
            experiment=args.experiment,
            dataset=args.dataset,
            family=args.family,
            dvc_exp=args.dvc_exp,
            metrics=args.metrics,
            out_dir=args.out,
            group=args.group,
            baseline=args.baseline,
            alpha=args.alpha,
            html=args.html,
        )
    out = Path(args.out)
    print(to_markdown(table), end="")
    print(f"{len(table)} run(s) from {store.display_uri(uri)} -> {out}/runs.csv, runs.md, runs.png")
    if args.group or args.baseline:
        _print_groups(out)
    if args.html:
        written = [out / name for name in (*FILES, *(GROUP_FILES if args.group or args.baseline else ()), "runs.html")]
        with store.store_errors(uri):
            run_id = store.log_comparison(uri, written, table.attrs["run_ids"], f"report: {len(table)} runs")
        print(f"-> {out}/runs.html, and with the tables to MLflow run {run_id} (experiment {store.REPORTS})")


def _print_groups(out: Path) -> None:
    """The groups table and the verdicts as sentences, read back from what build_report wrote."""
    import pandas as pd

    print("\n" + (out / "groups.md").read_text(), end="")
    verdicts = pd.read_csv(out / "verdicts.csv")
    print("\n".join(["", *verdicts["verdict"]]) if len(verdicts) else "\nonly one group: nothing to compare")
    print(f"-> {out}/{', '.join(GROUP_FILES)}")


if __name__ == "__main__":
    exit_on_error(run)
