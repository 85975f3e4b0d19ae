"""`flexserve bench-federated`: the recommender trained federated against the same model trained
centrally, on the same MovieLens-100k split, over seeds.

Per seed: the centralized full model as the build trains it (test RMSE on the test split), and the
federated run (training/federated.py, Flower's simulation engine) with the given settings (the
federated test RMSE: each client scores its own users' test ratings with the embeddings only it
holds). Reported: both RMSEs, their paired difference with its 95% interval, rounds, wall time and
bytes sent; the validation RMSE per round is plotted. Target: federated within 0.02 of centralized.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from contract.statistics import mean_interval, paired_difference
from training.progress import Progress


def run(seeds: list[int], settings, out: Path) -> int:
    import torch

    from training.data import load_dataset
    from training.federated import simulate
    from training.tasks import get_task
    from training.trainer import TrainConfig, predict, train

    out.mkdir(parents=True, exist_ok=True)
    task = get_task("recsys")
    rows = []
    with Progress(len(seeds) * (settings.rounds + 1), "bench-federated", unit="rounds", rate=False) as progress:
        for seed in seeds:
            data = load_dataset("recsys", seed=seed)
            started = time.perf_counter()
            torch.manual_seed(seed)
            config = TrainConfig(**task.train_settings("full", quick=False), seed=seed)
            model = train(
                task.build("full", data), task, data.train, data.val, config, f"centralized (seed {seed})"
            ).model
            central_s = time.perf_counter() - started
            central = task.metric(predict(model, data.test, task), data.test.targets)
            progress.update(1, note=f"seed {seed}: centralized")

            def on_round(record: dict, seed=seed) -> None:
                progress.update(1, note=f"seed {seed}: round {record['round']}, val RMSE {record['val_rmse']:.4f}")

            result = simulate(dataclasses.replace(settings, seed=seed), on_round)
            summary = result["summary"]
            rows.append(
                {
                    "seed": seed,
                    "centralized_test_rmse": central,
                    "centralized_seconds": central_s,
                    "federated_test_rmse": summary["final"]["test"]["rmse"],
                    "federated_seconds": summary["seconds"],
                    "bytes_sent": summary["bytes_sent"],
                    "history": summary["history"],
                }
            )
            progress.log(f"seed {seed}: centralized {central:.4f}, federated {rows[-1]['federated_test_rmse']:.4f}")
    gap = paired_difference([r["federated_test_rmse"] for r in rows], [r["centralized_test_rmse"] for r in rows])
    central = mean_interval([r["centralized_test_rmse"] for r in rows])
    federated = mean_interval([r["federated_test_rmse"] for r in rows])
    report = [
        "# Federated (Flower) against centralized training of the recommender\n",
        f"Settings: {settings.clients} clients, {settings.rounds} rounds, {settings.fraction:g} of the clients a "
        f"round, {settings.strategy}, {settings.local_epochs} local epochs, client weight decay "
        f"{settings.weight_decay:g}; seeds {seeds}. Test RMSE on the same split.\n",
        "| seed | centralized | federated | federated - centralized | centralized s | federated s | MB sent |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['seed']} | {r['centralized_test_rmse']:.4f} | {r['federated_test_rmse']:.4f} | "
            f"{r['federated_test_rmse'] - r['centralized_test_rmse']:+.4f} | {r['centralized_seconds']:.0f} | "
            f"{r['federated_seconds']:.0f} | {r['bytes_sent'] / 1e6:.0f} |"
            for r in rows
        ),
        f"\nMean: centralized {central.mean:.4f}, federated {federated.mean:.4f}; gap {gap} (95% interval over seeds).",
        f"Target (gap <= 0.02): {'PASS' if gap.mean <= 0.02 else 'FAIL'} on the mean; the interval's upper end "
        f"{gap.high:+.4f} {'is' if gap.high <= 0.02 else 'is not'} within it.",
    ]
    plot(rows, out / "federated.png")
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(report))
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, row in enumerate(rows):
        color = f"C{i}"
        ax.plot(
            [h["round"] for h in row["history"]],
            [h["val_rmse"] for h in row["history"]],
            color=color,
            label=f"federated, seed {row['seed']} (val, sampled clients)",
        )
        ax.axhline(row["centralized_test_rmse"], color=color, linestyle="--", linewidth=1)
        ax.scatter([row["history"][-1]["round"]], [row["federated_test_rmse"]], color=color, marker="*", s=80)
    ax.set_xlabel("round")
    ax.set_ylabel("RMSE")
    ax.set_title(
        "Federated recommender: validation RMSE per round\n(dashed: centralized test RMSE; star: federated test RMSE)"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
