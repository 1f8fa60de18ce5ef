"""Training logs: a CSV (one row per logged step, columns fixed by the first row) and TensorBoard scalars."""
from __future__ import annotations

import csv
from pathlib import Path


class RunLog:
    """Appends to RUN_DIR/log.csv and RUN_DIR/tensorboard/. Rows are labelled with the number of steps done; a resumed run drops rows past its checkpoint first."""

    def __init__(self, run_dir: Path, *, resume_step: int | None, tensorboard: bool = True):
        self.path = Path(run_dir) / "log.csv"
        self.columns: list[str] | None = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if resume_step is not None and int(float(r["step"])) <= resume_step]
            if rows:
                self.columns = list(rows[0])
            self._rewrite(keep)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=None if resume_step is None else resume_step + 1)

    def _rewrite(self, rows: list[dict]) -> None:
        with open(self.path, "w", newline="") as f:
            if self.columns:
                w = csv.DictWriter(f, self.columns)
                w.writeheader()
                w.writerows(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        if self.columns is None:
            self.columns = list(row)
            self._rewrite([])
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(run_dir: Path) -> list[dict[str, float]]:
    with open(Path(run_dir) / "log.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_run(run_dir: Path) -> Path | None:
    """RUN_DIR/curves.png from RUN_DIR/log.csv. None when nothing is logged yet."""
    from motionssl.pictures import write_png
    from motionssl.pictures.curves import run_curves

    run_dir = Path(run_dir)
    if not (run_dir / "log.csv").exists():
        return None
    image = run_curves(read_log(run_dir))
    return None if image is None else write_png(image, run_dir / "curves.png")
