"""Screenshots of `mlflow ui` for the docs, taken in a real headless browser (refresh them after an MLflow upgrade).

Copies an MLflow store (mlflow.db + mlartifacts/) to a temporary folder, starts `mlflow ui` on it on a
free loopback port, drives Debian's `chromium` through Playwright's Python API and writes, into --out:
  <prefix>runs.png      the Model training view: the runs table (run names lead with the changed params)
  <prefix>curves.png    a run's Model metrics tab: the per-epoch train/val curves
  <prefix>images-as-opened.png   the same tab's image cards as they open (step 0, the run's params shown)
  <prefix>images.png    the same cards with "Show run parameters" off and the slider at the last epoch
  <prefix>compare.png   the chart view of the runs page: the latest --compare runs' curves overlaid
  <prefix>compare-images.png   the same view's sample card opened full screen: one image per run

    make screenshots                                   # docs/figures/ui-*.png from this repo's store
    python docs/screenshots.py --store ../old-clone --prefix ui-before-
    python docs/screenshots.py --page reports/runs.html --prefix report-     # that page, whole: <prefix>page.png
    python docs/screenshots.py --page dvc_plots/index.html --prefix dvc-plots-   # `dvc plots show`'s page
A --page is opened as without internet (any request outside file:// is refused, and named if there was one).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from genlab.tracking.store import EXPERIMENT, relocate

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1440, "height": 1000}
SETTLE_S = 6  # the UI fetches and draws charts after the page's load event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(store: Path, port: int):
    """`mlflow ui` on a copy of `store` (the original is never touched), until the block ends."""
    with tempfile.TemporaryDirectory(prefix="genlab-ui-") as tmp:
        copy = Path(tmp)
        shutil.copy2(store / "mlflow.db", copy / "mlflow.db")
        if (store / "mlartifacts").is_dir():
            shutil.copytree(store / "mlartifacts", copy / "mlartifacts")
        relocate(copy)  # the copy's artifact paths point at the copy
        command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        with open(copy / "ui.log", "w") as log:
            server = subprocess.Popen(command, cwd=copy, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_until_up(server, port, copy / "ui.log")
                yield copy / "mlflow.db"
            finally:
                server.terminate()
                server.wait(timeout=30)


def wait_until_up(server: subprocess.Popen, port: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: mlflow ui did not start; its log:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def latest_runs(db: Path, n: int) -> tuple[str, list[str]]:
    """The experiment id of 'genlab' and its `n` latest finished runs (newest first)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        sys.exit(f"error: the store has no experiment '{EXPERIMENT}': run `make run` first")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=n, order_by=["start_time DESC"]
    )
    if not runs:
        sys.exit(f"error: experiment '{EXPERIMENT}' has no finished run: run `make run` first")
    return experiment.experiment_id, [r.info.run_id for r in runs]


class Screens:
    def __init__(self, page, base: str, out: Path, prefix: str):
        self.page, self.base, self.out, self.prefix = page, base, out, prefix

    def open(self, route: str) -> None:
        self.page.goto(f"{self.base}/#/{route}")
        self.page.wait_for_load_state("load")
        time.sleep(SETTLE_S)
        close = self.page.get_by_role("button", name="Close")  # MLflow 3's assistant panel takes a third
        if close.count():
            close.first.click()

    def collapse(self, *sections: str) -> None:
        """Fold the chart sections named (their headers are the metric prefixes: test, time, train, val)."""
        for name in sections:
            header = self.page.get_by_text(name, exact=True)
            if header.count():
                header.first.click()
                time.sleep(0.5)

    def hide_run_params(self) -> None:
        """Untick "Show run parameters" in each visible image card (card menu > Configure): the image gets
        the card's height instead of sharing it with the run's param list."""
        menus = self.page.locator("[data-testid=experiment-view-compare-runs-card-menu]:visible")
        for i in range(menus.count()):
            menus.nth(i).click()
            self.page.get_by_role("menuitem", name="Configure").click()
            dialog = self.page.get_by_role("dialog")
            switch = dialog.get_by_role("switch", name="Show run parameters")
            if switch.count() and switch.is_checked():
                switch.click()
            dialog.get_by_role("button", name="Save changes").click()
            time.sleep(1)

    def expand_last_card(self) -> None:
        """Open the last visible card full screen (its button sits left of the card's menu): a card holds
        one image per run side by side, and at its normal size only the first run's fits."""
        menu = self.page.locator("[data-testid=experiment-view-compare-runs-card-menu]:visible").last
        menu.locator("xpath=preceding-sibling::button[1]").click()
        time.sleep(1)

    def slide_to_end(self) -> None:
        """Move every image card's step slider to its last step (the cards open at the first)."""
        for slider in self.page.locator("[role=slider]").all():
            box = slider.bounding_box()
            if box is None:
                continue
            y = box["y"] + box["height"] / 2
            self.page.mouse.move(box["x"] + box["width"] / 2, y)
            self.page.mouse.down()
            self.page.mouse.move(box["x"] + 2000, y, steps=8)  # past the track's end: it clamps
            self.page.mouse.up()
        self.page.evaluate("window.getSelection().removeAllRanges()")  # the drag selects the text it crosses

    def shoot(self, name: str) -> None:
        time.sleep(SETTLE_S)
        path = self.out / f"{self.prefix}{name}.png"
        self.page.screenshot(path=str(path))
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=ROOT, help="folder holding mlflow.db and mlartifacts/")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--prefix", default="ui-")
    parser.add_argument("--compare", type=int, default=3, help="how many of the latest runs the chart view shows")
    parser.add_argument("--runs", nargs="+", help="run ids for the chart view instead (the first one's page is shown)")
    parser.add_argument("--page", "--report", type=Path, help="a local HTML page (runs.html, dvc_plots/index.html) "
                        "to photograph instead of the UI")  # fmt: skip
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    if not args.page and not (args.store / "mlflow.db").is_file():
        sys.exit(f"error: no mlflow.db in {args.store}: pass --store <folder with mlflow.db and mlartifacts/>")
    if not args.chromium:
        sys.exit("error: no chromium found: install Debian's (apt install chromium) or pass --chromium PATH")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("error: Playwright is missing: `make setup` installs it (requirements.lock)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.page:
        refused = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.route(re.compile(r"^(?!file:).*"), lambda route: (refused.append(route.request.url), route.abort()))
            page.goto(args.page.resolve().as_uri(), wait_until="load")
            time.sleep(2)  # Vega draws dvc's plots after the load event
            path = args.out / f"{args.prefix}page.png"
            page.screenshot(path=str(path), full_page=True)
            browser.close()
        print(f"wrote {path}" + (f"; the page asked the network for {refused} (refused)" if refused else ""))
        return
    port = free_port()
    with mlflow_ui(args.store, port) as db, sync_playwright() as playwright:
        experiment, runs = latest_runs(db, args.compare)
        runs = args.runs or runs
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        screens = Screens(browser.new_page(viewport=VIEWPORT), f"http://127.0.0.1:{port}", args.out, args.prefix)
        listing = f"experiments/{experiment}/runs?workflowType=machine_learning"
        screens.open(listing)
        screens.shoot("runs")

        screens.open(f"experiments/{experiment}/runs/{runs[0]}/model-metrics?workflowType=machine_learning")
        screens.collapse("test", "time")
        screens.shoot("curves")
        screens.collapse("train", "val")
        screens.shoot("images-as-opened")
        screens.hide_run_params()
        screens.slide_to_end()
        screens.shoot("images")

        ids = ", ".join(f"'{r}'" for r in runs)
        screens.open(f"{listing}&compareRunsMode=CHART")
        search = screens.page.locator("input[data-testid=search-box], [data-testid=search-box] input").first
        search.fill(f"attributes.run_id IN ({ids})")
        search.press("Enter")
        time.sleep(SETTLE_S)
        screens.collapse("test", "time")
        screens.shoot("compare")
        screens.collapse("train", "val")
        screens.hide_run_params()
        screens.expand_last_card()
        screens.slide_to_end()
        screens.shoot("compare-images")
        browser.close()


if __name__ == "__main__":
    main()
