"""Federated training's pure parts: the partition of users into clients, what a client keeps and what it
sends (a real ClientApp called with a Flower message, no runtime), and its settings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from training.federated import (
    LOCAL,
    FederatedSettings,
    build_model,
    client_split,
    dataset,
    make_client_app,
    partition,
    round_lr,
    shared_state,
)


def test_the_partition_puts_each_user_on_exactly_one_client_and_is_seeded():
    client_of = partition(943, 100, seed=0)
    assert client_of.shape == (943,) and set(client_of.tolist()) == set(range(100))
    sizes = np.bincount(client_of)
    assert sizes.max() - sizes.min() <= 1  # 9 or 10 users each
    assert np.array_equal(client_of, partition(943, 100, seed=0))
    assert not np.array_equal(client_of, partition(943, 100, seed=1))
    with pytest.raises(ValueError, match="clients"):
        partition(3, 4, seed=0)


def test_every_rating_belongs_to_its_users_client_and_to_no_other():
    data = dataset(0, synthetic=True)
    client_of = partition(len(data.preprocessing["tables"]["USER_FEATURES"]), 3, seed=0)
    parts = [client_split(data.train, client_of, c) for c in range(3)]
    assert sum(len(p) for p in parts) == len(data.train)
    for c, part in enumerate(parts):
        assert (client_of[part.inputs["USER_FEATURES"][:, 0]] == c).all()


@pytest.fixture
def flower_process(monkeypatch):
    """What Flower's runtime sets in a ServerApp's process before it makes messages."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def flower_call(app, message_type: str, arrays: dict, config: dict, state=None):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    message = Message(
        RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)}),
        dst_node_id=1,
        message_type=message_type,
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": 3},
        state=state if state is not None else RecordDict(),
        run_config={},
    )
    return app(message, context), context


def test_a_client_sends_everything_but_its_users_rows_and_keeps_those(flower_process):
    settings = FederatedSettings(clients=3, rounds=1, synthetic=True, local_epochs=1)
    data = dataset(0, synthetic=True)
    shared = shared_state(build_model(data, 0))
    config = {**settings.to_config(), "server-round": 1}
    reply, context = flower_call(make_client_app(), "train", shared, config)
    sent = reply.content["arrays"].to_torch_state_dict()
    assert set(sent) == set(shared) and not set(sent) & set(LOCAL)
    assert reply.content["metrics"]["num-examples"] > 0
    client_of = partition(len(data.preprocessing["tables"]["USER_FEATURES"]), 3, 0)
    kept = context.state.array_records["users"].to_torch_state_dict()["rows"]
    assert kept.shape == (int((client_of == 1).sum()), 64) and kept.abs().sum() > 0  # trained from zero
    assert any(not torch.equal(sent[k], shared[k]) for k in shared)  # it trained
    # the next call starts from the rows it kept
    evaluate, _ = flower_call(make_client_app(), "evaluate", shared, config | {"split": "val"}, context.state)
    assert evaluate.content["metrics"]["num-examples"] > 0 and evaluate.content["metrics"]["mse"] > 0


def test_settings_check_their_values_and_read_a_run_config():
    with pytest.raises(ValueError, match="strategy"):
        FederatedSettings(strategy="fedsgd")
    with pytest.raises(ValueError, match="fraction"):
        FederatedSettings(fraction=0)
    settings = FederatedSettings.from_config({"rounds": 4, "local-epochs": 3, "unknown-key": 1})
    assert (settings.rounds, settings.local_epochs) == (4, 3)


def test_the_clients_learning_rate_decays_over_the_rounds():
    settings = FederatedSettings(rounds=10, lr=1e-2)
    rates = [round_lr(settings, r) for r in range(1, 11)]
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3)
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_the_command_lines_stated_defaults_are_the_settings_defaults():
    import re

    from flexserve.cli import build_parser

    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    stated = {
        action.dest: re.search(r"\(default: ([^)]+)\)", action.help).group(1)
        for action in train._actions
        if action.dest in ("clients", "rounds", "fraction", "strategy")
    }
    defaults = FederatedSettings()
    assert stated == {name: str(getattr(defaults, name)) for name in stated} and len(stated) == 4
