"""PNG curves of a training job record: the loss, each metric, the weights' norms (matplotlib, no display)."""

from __future__ import annotations

import re
from pathlib import Path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "metric"


def write(job: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []

    def save(fig, name: str) -> None:
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(str(path))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(job["loss"]["iterations"], job["loss"]["values"], linewidth=1)
    ax.set(title=f"{job['training']}: loss", xlabel="iteration", ylabel=job["spec"]["loss"])
    save(fig, "loss")

    its = [v["iteration"] for v in job["validations"]]
    for i, name in enumerate(job["metric_names"]):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(its, [v["values"][i] for v in job["validations"]], marker="o")
        if job.get("best"):
            ax.axvline(job["best"]["iteration"], color="grey", linestyle="--", linewidth=1)
        ax.set(title=f"{job['training']}: {name} on {job['validation_set']}", xlabel="iteration", ylabel=name)
        save(fig, f"metric_{_safe(name)}")

    if job.get("weights"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for w in job["weights"]:
            ax.plot(its, w["norm"], label=w["name"])
        ax.set(title=f"{job['training']}: weight norms", xlabel="iteration", ylabel="L2 norm")
        ax.legend(fontsize="small")
        save(fig, "weights")
    return paths
