"""Federated training of the recommender with Flower: the ratings stay where they are.

MovieLens users are partitioned into clients (`partition`: each user on exactly one client, seeded).
Each client trains the full rating model on its own users' ratings; what it sends back is everything
but the user id embeddings (`LOCAL`): the item tower, the head, and the population-wide parts of the
user side (the demographic embeddings and the user tower). A client's users' embedding rows live in
its Flower `context.state` from round to round and never leave it. The server aggregates with the
chosen strategy (FedAvg, FedProx, FedAdam: Flower's own, `flwr.serverapp.strategy`).

How a client's users are scored: on their client, with the embeddings only it holds and the global
model. The federated validation and test RMSE are measured that way (each client's squared error on
its users' ratings of the split, aggregated weighted by ratings). The server never sees a user row,
so the variants it serves carry none of them: every catalogue user is rated at the cold-start prior
(with their own demographics), unless the request sends the user's ratings, which the gateway fits
(training/coldstart.py); their served test RMSE, the router's metric, is measured that way too.

One ServerApp and one ClientApp serve both runtimes. `simulate` runs them in Flower's simulation
engine (Ray) in this process; `training/flower_apps.py` holds them for a real SuperLink and its
SuperNodes (`flwr run training/flower`, README). Settings travel from the server to the clients in each round's
config, so a SuperNode needs only its partition (`--node-config "partition-id=0 num-partitions=2"`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.recsys import RatingPredictor
from training.data import Dataset, Split
from training.trainer import predict, to_tensors

LOCAL = ("user.weight",)  # parameters that never leave a client: its users' id embeddings
STRATEGIES = ("fedavg", "fedprox", "fedadam")
RESULT_ARRAYS, RESULT_SUMMARY = "federated_model.npz", "federated_summary.json"


@dataclasses.dataclass(frozen=True)
class FederatedSettings:
    clients: int = 100
    rounds: int = 30
    fraction: float = 0.5  # of the clients, sampled to train (and to validate) each round
    strategy: str = "fedavg"
    local_epochs: int = 2
    batch_size: int = 64
    lr: float = 3e-3
    # AdamW's decoupled decay on a client, as strong as the centralized full model's (training/tasks.py:
    # the ids overfit). 0.05 left the federated model 0.016 behind centralized, 0.4 0.012 (README).
    weight_decay: float = 0.4
    # A client's user rows learn only in the rounds it is sampled in: they start at zero and learn this
    # many times faster than the shared weights (the centralized model's rows take every step of training).
    user_lr_scale: float = 10.0
    personalize_epochs: int = 3  # a client fits its user rows to the current model before it scores them
    proximal_mu: float = 0.01  # FedProx's pull toward the global weights
    server_lr: float = 0.01  # FedAdam's step
    seed: int = 0
    synthetic: bool = False
    quick: bool = False  # the build's --quick subsets of the real splits (as the centralized quick build)
    out: str = ""  # where the server writes the final model and the summary ("" : nowhere)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: got {self.strategy!r}, expected one of {', '.join(STRATEGIES)}")
        if self.clients < 1 or self.rounds < 1 or not 0 < self.fraction <= 1:
            raise ValueError(
                f"need clients >= 1, rounds >= 1 and 0 < fraction <= 1, got {self.clients}, {self.rounds}, "
                f"{self.fraction}"
            )

    def to_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config) -> FederatedSettings:
        names = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for name, value in dict(config).items():
            key = name.replace("-", "_")
            if key in names:
                values[key] = value
        return cls(**values)


# -- data ------------------------------------------------------------------------------------------
def partition(num_users: int, clients: int, seed: int) -> np.ndarray:
    """The client of each catalogue user row: a seeded shuffle dealt round-robin (sizes differ by at most one)."""
    if clients > num_users:
        raise ValueError(f"clients: {clients} is more than the {num_users} users to share among them")
    client_of = np.empty(num_users, dtype=np.int64)
    client_of[np.random.default_rng([seed, 31]).permutation(num_users)] = np.arange(num_users) % clients
    return client_of


def client_split(split: Split, client_of: np.ndarray, client: int) -> Split:
    return split.take(np.flatnonzero(client_of[split.inputs["USER_FEATURES"][:, 0]] == client))


_DATA: dict[tuple[int, bool, bool], Dataset] = {}  # per process: a client is called every round it is sampled


def dataset(seed: int, synthetic: bool, quick: bool = False) -> Dataset:
    """The recommender's data as the build has it (with `quick`, its subsets: training.pipeline's)."""
    if (seed, synthetic, quick) not in _DATA:
        from training.pipeline import BuildConfig, load_family_data

        config = BuildConfig(seed=seed, synthetic=synthetic, quick=quick)
        _DATA[(seed, synthetic, quick)] = load_family_data("recsys", config)
    return _DATA[(seed, synthetic, quick)]


def build_model(data: Dataset, seed: int) -> RatingPredictor:
    from training.tasks import get_task  # tasks imports the trainer's world; only when a model is built

    torch.manual_seed(seed)
    return get_task("recsys").build("full", data)


def shared_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a client sends: every parameter and buffer but `LOCAL`."""
    return {name: value.detach().clone() for name, value in model.state_dict().items() if name not in LOCAL}


# -- the client --------------------------------------------------------------------------------------
def _inputs(split: Split, index: np.ndarray) -> list[torch.Tensor]:
    from training.tasks import get_task

    return to_tensors({name: value[index] for name, value in split.inputs.items()}, get_task("recsys"), "cpu")


def round_lr(settings: FederatedSettings, server_round: int) -> float:
    """The clients' learning rate in a round: cosine from `lr` down to a tenth of it over the rounds,
    so that the last rounds settle instead of trading one client's drift for another's."""
    progress = (server_round - 1) / max(1, settings.rounds - 1)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def local_train(
    model: RatingPredictor, split: Split, settings: FederatedSettings, lr: float, proximal_mu: float, rng
) -> float:
    """`settings.local_epochs` over the client's ratings; returns the mean training loss (MSE)."""
    anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n not in LOCAL} if proximal_mu else {}
    local = [p for n, p in model.named_parameters() if n in LOCAL]
    shared = [p for n, p in model.named_parameters() if n not in LOCAL]
    optimizer = torch.optim.AdamW(
        [{"params": shared}, {"params": local, "lr": lr * settings.user_lr_scale}],
        lr=lr,
        weight_decay=settings.weight_decay,
    )
    model.train()
    losses = []
    targets = torch.as_tensor(split.targets)
    for _ in range(settings.local_epochs):
        order = rng.permutation(len(split))
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            loss = torch.nn.functional.mse_loss(model(*_inputs(split, index)), targets[index])
            objective = loss
            if anchor:  # FedProx: mu/2 |w - w_global|^2 over what is aggregated
                drift = sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in anchor)
                objective = loss + proximal_mu / 2 * drift
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    return float(np.mean(losses)) if losses else 0.0


def personalize(model: RatingPredictor, split: Split, settings: FederatedSettings, rng) -> None:
    """Fit the client's user rows to its training ratings under the global model as it stands (the
    shared weights frozen): what a client does before it scores its users. Local work only."""
    if not settings.personalize_epochs or not len(split):
        return
    shared = {n: p.requires_grad for n, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in LOCAL)
    optimizer = torch.optim.Adam([model.user.weight], lr=settings.lr * settings.user_lr_scale)
    targets = torch.as_tensor(split.targets)
    model.eval()  # no dropout: the rows are fitted to the model that will score them
    for _ in range(settings.personalize_epochs):
        order = rng.permutation(len(split))
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            loss = torch.nn.functional.mse_loss(model(*_inputs(split, index)), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(shared[name])


def squared_error(model: RatingPredictor, split: Split) -> tuple[float, int]:
    from training.tasks import get_task

    if not len(split):
        return 0.0, 0
    predicted = predict(model, split, get_task("recsys"))
    return float(((predicted - split.targets) ** 2).sum()), len(split)


class Client:
    """One client's view: its users, its ratings of each split, and the model with its own user rows."""

    def __init__(self, settings: FederatedSettings, partition_id: int, num_partitions: int, state_rows=None):
        torch.set_num_threads(1)
        self.settings = settings
        self.data = dataset(settings.seed, settings.synthetic, settings.quick)
        client_of = partition(len(self.data.preprocessing["tables"]["USER_FEATURES"]), num_partitions, settings.seed)
        self.users = np.flatnonzero(client_of == partition_id)
        self.splits = {
            name: client_split(getattr(self.data, name), client_of, partition_id) for name in ("train", "val", "test")
        }
        self.model = build_model(self.data, settings.seed)
        with torch.no_grad():
            rows = torch.zeros(len(self.users), self.model.config.embed_dim) if state_rows is None else state_rows
            self.model.user.weight[torch.as_tensor(self.users)] = torch.as_tensor(rows)

    def load(self, shared: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(shared, strict=False)
        if unexpected or set(missing) != set(LOCAL):
            raise ValueError(f"the server's model does not fit: missing {missing}, unexpected {unexpected}")

    def rows(self) -> np.ndarray:
        return self.model.user.weight.detach()[torch.as_tensor(self.users)].numpy().copy()


def make_client_app():
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def client(msg: Message, context: Context) -> Client:
        settings = FederatedSettings.from_config(msg.content["config"])
        rows = context.state.array_records.get("users")
        return Client(
            settings,
            int(context.node_config["partition-id"]),
            int(context.node_config["num-partitions"]),
            None if rows is None else rows.to_torch_state_dict()["rows"].numpy(),
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        own = client(msg, context)
        own.load(msg.content["arrays"].to_torch_state_dict())
        config = msg.content["config"]
        rng = np.random.default_rng(
            [own.settings.seed, int(config["server-round"]), int(context.node_config["partition-id"])]
        )
        lr = round_lr(own.settings, int(config["server-round"]))
        loss = local_train(own.model, own.splits["train"], own.settings, lr, float(config.get("proximal-mu", 0.0)), rng)
        context.state["users"] = ArrayRecord({"rows": torch.as_tensor(own.rows())})  # kept here, never sent
        content = RecordDict(
            {
                "arrays": ArrayRecord(shared_state(own.model)),
                "metrics": MetricRecord({"train-mse": loss, "num-examples": len(own.splits["train"])}),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        own = client(msg, context)
        own.load(msg.content["arrays"].to_torch_state_dict())
        rng = np.random.default_rng([own.settings.seed, int(context.node_config["partition-id"]), 7])
        personalize(own.model, own.splits["train"], own.settings, rng)
        context.state["users"] = ArrayRecord({"rows": torch.as_tensor(own.rows())})
        sse, n = squared_error(own.model, own.splits[str(msg.content["config"]["split"])])
        metrics = MetricRecord({"mse": sse / max(n, 1), "num-examples": n})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


# -- the server --------------------------------------------------------------------------------------
def make_strategy(settings: FederatedSettings, clients_online: int):
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    sampled = max(1, round(settings.fraction * settings.clients))
    common = {
        "fraction_train": settings.fraction,
        "fraction_evaluate": settings.fraction,
        "min_train_nodes": min(sampled, clients_online),
        "min_evaluate_nodes": min(sampled, clients_online),
        "min_available_nodes": clients_online,
    }
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    if settings.strategy == "fedadam":
        return FedAdam(eta=settings.server_lr, **common)
    return FedAvg(**common)


def _records_bytes(messages) -> int:
    return sum(m.content["arrays"].count_bytes() for m in messages if m.has_content() and "arrays" in m.content)


def run_server(grid, settings: FederatedSettings, on_round: Callable[[dict], None] | None = None) -> dict:
    """The ServerApp's work: `settings.rounds` rounds, each a training round on a sampled fraction and
    a federated validation on another, then the federated test RMSE over every client; the final
    shared weights and the summary are written to `settings.out` when set."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    random.seed(settings.seed)  # Flower samples clients with `random`
    data = dataset(settings.seed, settings.synthetic, settings.quick)
    model = build_model(data, settings.seed)
    arrays = ArrayRecord(shared_state(model))
    strategy = make_strategy(settings, settings.clients)
    config = settings.to_config()
    history, started = [], time.perf_counter()

    def federated_mse(replies) -> tuple[float, int]:
        sse = n = 0
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"a client failed to evaluate: {reply.error.reason}")
            metrics = reply.content["metrics"]
            sse += float(metrics["mse"]) * int(metrics["num-examples"])
            n += int(metrics["num-examples"])
        return sse / max(n, 1), n

    for rnd in range(1, settings.rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(config), grid))
        replies = list(grid.send_and_receive(messages))
        failed = [r for r in replies if r.has_error()]
        if failed:
            raise RuntimeError(f"round {rnd}: {len(failed)} clients failed to train: {failed[0].error.reason}")
        sent = _records_bytes(messages) + _records_bytes(replies)
        aggregated, _ = strategy.aggregate_train(rnd, replies)
        if aggregated is not None:
            arrays = aggregated
        evaluate = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord(config | {"split": "val"}), grid))
        sent += _records_bytes(evaluate)  # the model goes to the validating clients too (they answer metrics)
        mse, n = federated_mse(grid.send_and_receive(evaluate))
        record = {
            "round": rnd,
            "clients": len(replies),
            "val_rmse": math.sqrt(mse),
            "val_ratings": n,
            "bytes_sent": sent,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        if on_round is not None:
            on_round(record)
        else:  # a deployment: into Flower's log, which `flwr run --stream` and `flwr log` show
            logging.getLogger("flwr").info(
                "[flexserve] round %d/%d: federated val RMSE %.4f (%d clients trained, %.1f MB sent)",
                rnd,
                settings.rounds,
                record["val_rmse"],
                record["clients"],
                sent / 1e6,
            )
    nodes = sorted(grid.get_node_ids())
    final = {}
    for split in ("val", "test"):
        content = RecordDict({"arrays": arrays, "config": ConfigRecord(config | {"split": split})})
        messages = [Message(content, dst_node_id=node, message_type=MessageType.EVALUATE) for node in nodes]
        mse, n = federated_mse(grid.send_and_receive(messages))
        final[split] = {"rmse": math.sqrt(mse), "ratings": n, "bytes_sent": _records_bytes(messages)}
    summary = {
        "settings": settings.to_config(),
        "history": history,
        "final": final,
        "bytes_sent": sum(r["bytes_sent"] for r in history) + sum(f["bytes_sent"] for f in final.values()),
        "seconds": time.perf_counter() - started,
        "local": list(LOCAL),
    }
    state = {name: np.asarray(value) for name, value in arrays.to_torch_state_dict().items()}
    if settings.out:
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / RESULT_ARRAYS, **state)
        (out / RESULT_SUMMARY).write_text(json.dumps(summary, indent=1))
    return {"summary": summary, "state": state}


def make_server_app(settings: FederatedSettings | None = None, on_round=None, results: dict | None = None):
    from flwr.app import Context
    from flwr.server import Grid
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        chosen = settings or FederatedSettings.from_config(context.run_config)
        outcome = run_server(grid, chosen, on_round)
        if results is not None:
            results.update(outcome)

    return app


def simulate(settings: FederatedSettings, on_round: Callable[[dict], None] | None = None) -> dict:
    """Run the federation in Flower's simulation engine (Ray, one CPU per client process); returns
    {"summary", "state"} (the final shared weights)."""
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)  # `on_round` reports the rounds
    results: dict = {}
    run_simulation(
        server_app=make_server_app(settings, on_round, results),
        client_app=make_client_app(),
        num_supernodes=settings.clients,
        backend_config={"init_args": {"num_cpus": 2, "include_dashboard": False}, "client_resources": {"num_cpus": 1}},
    )
    if "summary" not in results:
        raise RuntimeError("the federated run ended without a result: see Flower's log above")
    return results


def load_shared(model: RatingPredictor, state: dict[str, np.ndarray]) -> None:
    """The server's weights into `model`; its user id rows, which no client sent, at zero (where a
    client's start)."""
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
    if unexpected or set(missing) != set(LOCAL):
        raise ValueError(f"the federated weights do not fit the model: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        model.user.weight.zero_()


def load_result(out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(summary, shared weights) a server wrote to `out` (numpy arrays: no pickle)."""
    summary = json.loads((out / RESULT_SUMMARY).read_text())
    with np.load(out / RESULT_ARRAYS, allow_pickle=False) as arrays:
        return summary, {name: arrays[name] for name in arrays.files}


# -- the build: federated variants beside the recommender's others ------------------------------------
def build(config, settings: FederatedSettings):
    """Train the recommender federated (`simulate`) and add its variants, `recsys_federated_<precision>`
    marked `"training": "federated"`, to the repository's recsys family, which a centralized build
    must have made first with the same seed (the same catalogue and split). Returns the manifest."""
    from contract.layout import new_version
    from contract.manifest import read_manifest
    from training import repository
    from training.pipeline import export_variants, load_family_data
    from training.progress import Progress
    from training.tasks import get_task

    manifest = read_manifest(config.out, missing_ok=True)
    section = manifest.families.get("recsys")
    hint = f"build the recommender first: `flexserve train --family recsys{' --quick' if config.quick else ''}`"
    if section is None:
        raise FileNotFoundError(f"{config.out} has no recsys family to add federated variants to: {hint}")
    if "cold_start" not in section.preprocessing:
        raise ValueError(f"{config.out}'s recsys family was built before cold start: rebuild it: {hint}")
    if section.dataset.get("seed") != config.seed or bool(section.dataset.get("quick")) != config.quick:
        raise ValueError(
            f"the repository's recsys family was built with seed {section.dataset.get('seed')} "
            f"(quick: {section.dataset.get('quick')}), this run uses seed {config.seed} (quick: {config.quick}): "
            f"their catalogues and splits differ; {hint} --seed {config.seed}"
        )
    task, data = get_task("recsys"), load_family_data("recsys", config)
    if section.dataset.get("source") != data.source:
        raise ValueError(
            f"the repository's recsys family was trained on {section.dataset.get('source')}, not {data.source}: {hint}"
        )
    settings = dataclasses.replace(
        settings,
        seed=config.seed,
        synthetic=config.synthetic,
        quick=config.quick,
        out=str(config.checkpoint_dir / "recsys_federated"),
    )
    total = settings.rounds + task.after_training_s(config.quick, kinds=1) + 3
    with Progress(total, "train --federated", unit="rounds and s of work", rate=False) as progress:
        progress.log(
            f"[recsys] federated: {settings.clients} clients, {settings.rounds} rounds, {settings.fraction:g} of the "
            f"clients a round, {settings.strategy}; {data.source}"
        )

        def on_round(record: dict) -> None:
            progress.log(
                f"[recsys] round {record['round']}/{settings.rounds}: federated val RMSE {record['val_rmse']:.4f} "
                f"({record['clients']} clients trained, {record['bytes_sent'] / 1e6:.1f} MB sent)"
            )
            progress.update(1, note=f"round {record['round']}")

        result = simulate(settings, on_round)
        model = build_model(data, config.seed)
        load_shared(model, result["state"])
        # its cold-start fit's item means: from the meta-training users' ratings, which the server holds
        # to meta-train on anyway; never from the clients' ratings
        summary, artifacts = task.after_training(
            data, {"federated": model}, config.quick, config.seed, progress, item_means_from="meta_training_users"
        )
        with torch.no_grad():  # no user's own row reached the server: every catalogue user rates as the prior
            model.user.weight[:-1] = model.user.weight[-1]
        with new_version(config.out) as stage:
            variants = export_variants(
                "recsys", data, {"federated": model}, stage, config.seed, progress, 1.0, "federated"
            )
            section = read_manifest(stage).families["recsys"]
            cold = json.loads((stage / section.preprocessing["cold_start"].path).read_text())
            if cold["prior_row"] != artifacts["cold_start"]["prior_row"]:
                raise ValueError("the federated model's prior row differs from the centralized ones': rebuild recsys")
            cold["kinds"]["federated"] = artifacts["cold_start"]["kinds"]["federated"]
            preprocessing = dict(section.preprocessing)
            preprocessing["cold_start"] = repository.write_json_artifact(stage, "recsys_cold_start.json", cold)
            training = dict(section.training)
            training["federated"] = {
                **result["summary"],
                "centralized_test_rmse": section.training["full"]["test_metric_pytorch"],
            }
            training["cold_start"] = {
                **section.training.get("cold_start", {}),
                "kinds": {**section.training.get("cold_start", {}).get("kinds", {}), **summary["cold_start"]["kinds"]},
            }
            kept = [v for v in section.variants if v.training != "federated"]
            merged = dataclasses.replace(
                section, variants=(*kept, *variants), preprocessing=preprocessing, training=training
            )
            repository.write_family(stage, "recsys", merged)
        if config.register:
            tag = repository.register_in_bentoml(config.out, read_manifest(config.out))
            progress.log(f"registered in the BentoML model store as {tag} (`bentoml models list`)")
        run = result["summary"]
        progress.log(
            f"[recsys] federated test RMSE {run['final']['test']['rmse']:.4f} (clients' own users) against "
            f"centralized {training['federated']['centralized_test_rmse']:.4f}; {run['bytes_sent'] / 1e6:.0f} MB "
            f"sent in {run['seconds']:.0f} s"
        )
    return read_manifest(config.out)
