"""Meta-learned cold start for the recommender: users the model never saw, from k = 1, 3, 5 or 10
ratings.

A new user is a point x in the user tower's input space (the id and demographic embeddings side by
side, `RatingPredictor.user_input`), fitted from their ratings around a prior x0 by ridge regression
on the model linearised at x0 (`contract/coldstart.py`: closed form, so the serving half fits one
inside a request, in numpy). What is served is the average of that fit and a simpler one: the item
means plus the user's mean residual from them, shrunk as if `shrinkage` more ratings had none. What
the fit starts from, and how hard each half holds to its prior, are learned:

- (b) the ordinary fit: x0 = the mean of the training users' inputs, and a Gaussian prior's
  penalty: the rating noise (the model's validation MSE) over each dimension's variance across
  training users; the shrinkage by empirical Bayes: the ratings' spread around the item means and
  the user's offset, over the spread of the users' offsets (`eb_shrinkage`). No meta-training.
- (c) meta-learned: x0, the per-dimension penalty and the shrinkage, meta-trained over the held-out
  meta-training users as tasks (MAML's outer loop over users, in the spirit of MeLU, KDD'19; the
  inner loop is the ridge solve itself, differentiated exactly, as in Bertinetto et al., ICLR'19,
  "Meta-learning with differentiable closed-form solvers"). Each task draws k from KS; one
  meta-training user's first k ratings in time are the support and up to QUERY_PER_TASK of their
  later ones the query (as the cold-start users are measured); the loss is the query MSE after the
  fit, of each half of the average on its own (their settings are apart, so this trains each for
  itself). The closed form is the limit of the inner loop's steps, so there is no step count to
  learn. The network's own weights stay as trained: the variants served are the ones measured.

Both are compared with (a) each item's mean training rating, on the held-out users
(`training/data.py`, `cold_start_users`): each one's first k ratings in time are the support, the
rest the query.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from contract.coldstart import KS, ColdStart, averaged, shrunk_offset
from contract.statistics import rmse_se
from models.recsys import RatingPredictor
from training.data import Dataset, Split
from training.progress import Progress
from training.tasks import get_task
from training.trainer import predict

QUERY_PER_TASK = 32  # query ratings per meta-training task (a user with more gives a random 32)
SECONDS_PER_STEP = 0.02  # a meta-training step of the full model here (the progress display's weight)


@dataclass(frozen=True)
class MetaSettings:
    steps: int = 600
    users_per_step: int = 32
    lr: float = 0.01
    seed: int = 0
    order: str = "time"  # the support: each user's first k ratings in time, or k at random ("random")
    # whose ratings the served item means come from: the training split's, or the meta-training users'
    # (a federated model's: its server holds no training rating)
    item_means_from: str = "train"

    @classmethod
    def for_build(cls, quick: bool, seed: int, item_means_from: str = "train") -> MetaSettings:
        return cls(steps=40 if quick else 600, seed=seed, item_means_from=item_means_from)


@dataclass
class Prior:
    """What the fit starts from: the prior input x0 [D], and the log of the per-dimension penalty
    [D + 1] (the last one for the user's rating offset); and the log of the item-mean half's
    shrinkage (a scalar)."""

    mean: torch.Tensor
    log_penalty: torch.Tensor
    log_shrinkage: torch.Tensor

    @property
    def penalty(self) -> torch.Tensor:
        return self.log_penalty.exp()

    def detached(self, requires_grad: bool = False) -> Prior:
        return Prior(
            *(
                p.detach().clone().requires_grad_(requires_grad)
                for p in (self.mean, self.log_penalty, self.log_shrinkage)
            )
        )

    def served(self, design: torch.Tensor, means: np.ndarray) -> ColdStart:
        """The served fit's state with this prior, from the fit's design [n, D + 1] at x0 and the item
        means [n], row for row (the whole catalogue's, or one user's items')."""
        return ColdStart(
            design.detach().numpy(),
            self.penalty.detach().numpy(),
            np.asarray(means, dtype=np.float32),
            float(self.log_shrinkage.exp()),
        )


def _item_vectors(model: RatingPredictor, tables: dict[str, np.ndarray]) -> torch.Tensor:
    return model.item_vectors(
        torch.as_tensor(tables["ITEM_FEATURES"]),
        torch.as_tensor(tables["ITEM_GENRES"]),
        torch.as_tensor(tables["ITEM_TITLE"]),
    )


def _frozen(model: RatingPredictor) -> RatingPredictor:
    model = model.cpu().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def linearised(
    model: RatingPredictor, prior: Prior, items: torch.Tensor, rows: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's ratings [n] of the catalogue rows `rows` (item vectors `items` [all, T]) and the
    fit's design [n, D + 1]: each rating's gradient with respect to the user's input, then a 1 for
    the user's rating offset. One backward pass: each row's rating depends on its own copy of the
    input only. `create_graph` keeps both differentiable in the prior."""
    offsets = torch.zeros(len(rows), len(prior.mean), requires_grad=True)
    with torch.enable_grad():
        ratings = model.rate(prior.mean + offsets, items[rows])
        (gradients,) = torch.autograd.grad(ratings.sum(), offsets, create_graph=create_graph)
    return ratings, torch.cat([gradients, torch.ones(len(rows), 1)], dim=1)


def ridge(jacobian: torch.Tensor, residual: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """`contract.coldstart.fit_offset` in torch, differentiable (the tests hold the two equal)."""
    scaled = jacobian / penalty
    gram = scaled @ jacobian.T + torch.eye(len(residual))
    return scaled.T @ torch.linalg.solve(gram, residual)


def ordinary_prior(model: RatingPredictor, data: Dataset) -> Prior:
    """(b): the training users' mean input; a Gaussian prior's penalty (the rating noise, the model's
    validation MSE, over each input dimension's variance across training users, and over the variance
    of the training users' mean ratings for the offset); the empirical-Bayes shrinkage. A dimension
    with no spread (a federated model's id rows, which the server never holds) is held at the prior."""
    model = _frozen(model)
    with torch.no_grad():
        inputs = model.user_input(torch.as_tensor(data.preprocessing["tables"]["USER_FEATURES"]))
    noise = float(((predict(model, data.val, get_task("recsys")) - data.val.targets) ** 2).mean())
    user_means = np.array([ratings.mean() for _, ratings in _by_user(data.train).values()])
    spread = torch.cat([inputs.var(dim=0), torch.tensor([float(user_means.var())])]).clamp(min=1e-6)
    return Prior(inputs.mean(dim=0), torch.log(noise / spread), torch.tensor(math.log(eb_shrinkage(data))))


def eb_shrinkage(data: Dataset) -> float:
    """(b)'s shrinkage for the item means' half, by empirical Bayes on the training split."""
    means = item_means(data, shrunk=True)
    return shrinkage_of([ratings - means[items] for items, ratings in _by_user(data.train).values()])


def shrinkage_of(residuals: list[np.ndarray]) -> float:
    """The empirical-Bayes (method of moments) shrinkage from each user's residuals from the item
    means: the pooled within-user variance, over the variance of the users' true offsets (their mean
    residuals' variance less its noise)."""
    counts = np.array([len(r) for r in residuals])
    noise = sum(float(((r - r.mean()) ** 2).sum()) for r in residuals) / max(int((counts - 1).sum()), 1)
    spread = float(np.var([r.mean() for r in residuals])) - float(np.mean(noise / counts))
    return noise / max(spread, 1e-6)


def _by_user(split: Split) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Catalogue user row -> (item rows, ratings) in `split`."""
    users, items = split.inputs["USER_FEATURES"][:, 0], split.inputs["ITEM_FEATURES"][:, 0]
    order = np.argsort(users, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(users[order])) + 1)
    return {int(users[g[0]]): (items[g], split.targets[g]) for g in groups if len(g)}


def _grouped(ratings: dict[str, np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """Per user (a run of equal `user`): its arrays other than `user`, in order."""
    bounds = np.flatnonzero(np.diff(ratings["user"])) + 1
    names = [name for name in ratings if name != "user"]
    return list(zip(*(np.split(ratings[name], bounds) for name in names), strict=True))


def held_out_users(data: Dataset, which: str = "cold_start_users", order: str = "time", seed: int = 0) -> list:
    """(item rows, ratings) of each held-out user (`which`: cold_start_users or meta_training_users),
    in time order, or with `order="random"` in a seeded random order (the protocol without time)."""
    users = _grouped(data.preprocessing[which])
    if order == "random":
        rng = np.random.default_rng([seed, 29])
        users = [(items[p], ratings[p]) for items, ratings in users for p in [rng.permutation(len(ratings))]]
    elif order != "time":
        raise ValueError(f"order: got {order!r}, expected 'time' or 'random'")
    return users


def meta_train(
    model: RatingPredictor,
    data: Dataset,
    start: Prior,
    settings: MetaSettings,
    progress: Progress | None = None,
    label: str = "recsys",
    tasks_from: str = "meta_training_users",
) -> tuple[Prior, list[float]]:
    """(c): the prior meta-trained from `start` over the meta-training users as tasks (`settings.order`
    says which of their ratings are the support); returns it and, each step, the query MSE of the
    served average.
    `tasks_from="cold_start_users"` meta-trains on the users it is measured on: a bound, not a method
    (loadtest/bench_coldstart.py)."""
    model = _frozen(model)
    items = _item_vectors(model, data.preprocessing["tables"])
    totals = _item_totals(data, settings.item_means_from, shrunk=True)
    # Where the means come from the task users themselves (a federated model's), each task's are
    # taken without that user's ratings, as a new user's are.
    own = settings.item_means_from == tasks_from
    # A task is a meta-training user as the cold-start users are measured: their first k ratings in
    # time the support, and up to QUERY_PER_TASK of their later ratings the query.
    users = held_out_users(data, tasks_from, settings.order, settings.seed)
    rng = np.random.default_rng(settings.seed)
    prior = start.detached(requires_grad=True)
    optimizer = torch.optim.Adam([prior.mean, prior.log_penalty, prior.log_shrinkage], lr=settings.lr)
    losses = []
    for step in range(settings.steps):
        picks = rng.choice(len(users), min(settings.users_per_step, len(users)), replace=False)
        tasks = []
        for u in picks:
            user_items, ratings = users[u]
            k = min(int(rng.choice(KS)), len(ratings) - 1)
            query = k + rng.permutation(len(ratings) - k)[:QUERY_PER_TASK]
            chosen = np.concatenate([np.arange(k), query])
            tasks.append((k, user_items[chosen], ratings[chosen]))
        rows = torch.as_tensor(np.concatenate([t[1] for t in tasks]))
        b, jacobian = linearised(model, prior, items, rows, create_graph=True)
        loss, served, start_at = 0.0, 0.0, 0
        for k, task_items, ratings in tasks:
            end = start_at + len(ratings)
            m = torch.as_tensor(means_without(totals, task_items, ratings if own else None))
            target = torch.as_tensor(ratings)
            tb, tj = b[start_at:end], jacobian[start_at:end]
            offset = ridge(tj[:k], target[:k] - tb[:k], prior.penalty)
            fitted = tb[k:] + tj[k:] @ offset
            from_means = m[k:] + shrunk_offset(target[:k] - m[:k], prior.log_shrinkage.exp())
            # each half for its own query error (their settings are apart); the log: the served average
            for half in (fitted, from_means):
                loss = loss + ((half.clamp(1.0, 5.0) - target[k:]) ** 2).mean()
            served = served + float(((averaged(fitted, from_means) - target[k:]) ** 2).mean())
            start_at = end
        loss = loss / len(tasks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(served / len(tasks))
        if progress is not None:
            progress.update(SECONDS_PER_STEP)
        if progress is not None and (step + 1) % max(1, settings.steps // 5) == 0:
            recent = losses[-max(1, settings.steps // 5) :]
            progress.log(
                f"[{label}] cold-start meta-training step {step + 1}/{settings.steps}: query MSE {np.mean(recent):.4f}"
            )
    return prior.detached(), losses


def _item_totals(data: Dataset, ratings_from: str, shrunk: bool) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Each catalogue item's rating sum and count in `ratings_from` (the training split, or a held-out
    group of users), the overall mean rating, and how many ratings at the overall mean each item's
    mean starts from: with `shrunk`, the empirical-Bayes number (`shrinkage_of` over the items), so
    that a movie one user rated 5 is not rated 5 for everyone; else none."""
    n = data.preprocessing["sizes"]["num_items"]
    if ratings_from == "train":
        items, ratings = data.train.inputs["ITEM_FEATURES"][:, 0], data.train.targets
    elif ratings_from == "meta_training_users":
        items, ratings = data.preprocessing[ratings_from]["item"], data.preprocessing[ratings_from]["rating"]
    else:
        raise ValueError(f"ratings_from: got {ratings_from!r}, expected 'train' or 'meta_training_users'")
    overall = float(ratings.mean())
    weight = 0.0
    if shrunk:
        order = np.argsort(items, kind="stable")
        weight = shrinkage_of(np.split(ratings[order] - overall, np.flatnonzero(np.diff(items[order])) + 1))
    return np.bincount(items, weights=ratings, minlength=n), np.bincount(items, minlength=n), overall, weight


def means_without(
    totals: tuple[np.ndarray, np.ndarray, float, float], items: np.ndarray, ratings: np.ndarray | None = None
) -> np.ndarray:
    """The means of `items` from `totals` (`_item_totals`), each without one rating of it, `ratings`,
    where given; the overall mean where no rating is left. float32."""
    sums, counts, overall, weight = totals
    left = counts[items] - (ratings is not None) + weight
    taken = sums[items] - (0.0 if ratings is None else ratings) + weight * overall
    return np.where(left > 0, taken / np.maximum(left, 1e-9), overall).astype(np.float32)


def item_means(data: Dataset, ratings_from: str = "train", shrunk: bool = False) -> np.ndarray:
    """(a): each catalogue item's mean training rating (the overall mean where it has none); with
    `ratings_from="meta_training_users"`, those users' ratings instead. `shrunk`: towards the overall
    mean (`_item_totals`), as the fits use them."""
    totals = _item_totals(data, ratings_from, shrunk)
    return means_without(totals, np.arange(data.preprocessing["sizes"]["num_items"]))


def evaluate(
    model: RatingPredictor, data: Dataset, priors: dict[str, Prior], settings: MetaSettings | None = None
) -> dict:
    """Per k: the cold-start users' query RMSE (and its standard error) for the item mean and for
    each prior in `priors`, each user's first k ratings (`settings.order`, as the priors were
    meta-trained) the support and the rest the query. The fits' item means come from
    `settings.item_means_from` (the baseline's are always the training split's)."""
    settings = settings or MetaSettings()
    model = _frozen(model)
    items = _item_vectors(model, data.preprocessing["tables"])
    means, fit_means = item_means(data), item_means(data, settings.item_means_from, shrunk=True)
    cold = held_out_users(data, order=settings.order, seed=settings.seed)
    # Each user's prior ratings and design, once per prior: the same for every k.
    with torch.no_grad():
        linear = [
            {
                name: (b.numpy(), prior.served(design, fit_means[user_items]))
                for name, prior in priors.items()
                for b, design in [linearised(model, prior, items, torch.as_tensor(user_items))]
            }
            for user_items, _ in cold
        ]
    table: dict = {}
    for k in KS:
        errors: dict[str, list[np.ndarray]] = {"item_mean": [], **{name: [] for name in priors}}
        n_users = 0
        for (user_items, ratings), states in zip(cold, linear, strict=True):
            if len(ratings) <= k:
                continue
            n_users += 1
            errors["item_mean"].append((means[user_items[k:]] - ratings[k:]) ** 2)
            for name, (b, state) in states.items():
                fitted = state.predict(b, np.arange(k), ratings[:k], np.arange(k, len(ratings)))
                errors[name].append((fitted - ratings[k:]) ** 2)
        table[str(k)] = {"users": n_users, "query_ratings": int(sum(len(e) for e in errors["item_mean"]))}
        for name, parts in errors.items():
            squared = np.concatenate(parts)
            table[str(k)][name] = {"rmse": math.sqrt(float(squared.mean())), "se": rmse_se(squared)}
    return table


def exported(
    model: RatingPredictor, data: Dataset, prior: Prior, item_means_from: str = "train"
) -> tuple[list[int], ColdStart]:
    """(the prior's USER_FEATURES row, the serving state) for `model` with `prior`: it appends the
    prior's input to `model` as one more user (the row the exported variants rate a new user at), and
    takes the fit's design at every catalogue item there; the item means from `item_means_from`."""
    model = _frozen(model)
    items = _item_vectors(model, data.preprocessing["tables"])
    with torch.no_grad():
        _, design = linearised(model, prior, items, torch.arange(len(items)))
    return model.add_user(prior.mean), prior.served(design, item_means(data, item_means_from, shrunk=True))
