"""Multimodal rating predictor for MovieLens: a user tower, an item tower, a fusion head.

The user tower embeds the id and the demographics (age bucket, gender, occupation); the
item tower embeds the id, the release-year bucket, the genre set and the title's words.
The head fuses both towers (concatenation and elementwise product) into a rating.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

TITLE_PAD_ID = 0


@dataclass(frozen=True)
class RecsysConfig:
    num_users: int
    num_items: int
    num_ages: int
    num_genders: int
    num_occupations: int
    num_years: int
    num_genres: int
    title_vocab_size: int
    embed_dim: int = 64  # ids dominate the parameter count; 64 is where validation RMSE stops improving
    tower_dim: int = 128
    head_hidden: tuple[int, ...] = (256, 128)  # the head runs once per (user, item) row: it sets the latency
    dropout: float = 0.2
    rating_min: float = 1.0
    rating_max: float = 5.0


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for in_size, out_size in itertools.pairwise(sizes):
        layers += [nn.Linear(in_size, out_size), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class RatingPredictor(nn.Module):
    """USER_FEATURES [N, 4] int64 (user, age bucket, gender, occupation),
    ITEM_FEATURES [N, 2] int64 (item, year bucket), ITEM_GENRES [N, G] float32 multi-hot,
    ITEM_TITLE [N, T] int64 (TITLE_PAD_ID-padded) -> RATING [N] float32 in [rating_min, rating_max].
    """

    def __init__(self, config: RecsysConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.user = nn.Embedding(config.num_users, d)
        self.age = nn.Embedding(config.num_ages, d // 4)
        self.gender = nn.Embedding(config.num_genders, d // 4)
        self.occupation = nn.Embedding(config.num_occupations, d // 4)
        self.item = nn.Embedding(config.num_items, d)
        self.year = nn.Embedding(config.num_years, d // 4)
        self.genres = nn.Linear(config.num_genres, d // 2, bias=False)
        self.title = nn.Embedding(config.title_vocab_size, d // 2, padding_idx=TITLE_PAD_ID)
        self.user_tower = _mlp([d + 3 * (d // 4), config.tower_dim], config.dropout)
        self.item_tower = _mlp([d + d // 4 + d // 2 + d // 2, config.tower_dim], config.dropout)
        self.head = nn.Sequential(
            _mlp([3 * config.tower_dim, *config.head_hidden], config.dropout),
            nn.Linear(config.head_hidden[-1] if config.head_hidden else 3 * config.tower_dim, 1),
        )

    def forward(
        self,
        user_features: torch.Tensor,
        item_features: torch.Tensor,
        item_genres: torch.Tensor,
        item_title: torch.Tensor,
    ) -> torch.Tensor:
        return self.rate(self.user_input(user_features), self.item_vectors(item_features, item_genres, item_title))

    def user_input(self, user_features: torch.Tensor) -> torch.Tensor:
        """The user tower's input [N, user_input_dim]: the id and demographic embeddings side by side.
        A cold-start user is a point in this space, fitted from a few ratings (training/coldstart.py)."""
        return torch.cat(
            [
                self.user(user_features[:, 0]),
                self.age(user_features[:, 1]),
                self.gender(user_features[:, 2]),
                self.occupation(user_features[:, 3]),
            ],
            dim=1,
        )

    @property
    def user_input_dim(self) -> int:
        return self.config.embed_dim + 3 * (self.config.embed_dim // 4)

    def item_vectors(
        self, item_features: torch.Tensor, item_genres: torch.Tensor, item_title: torch.Tensor
    ) -> torch.Tensor:
        """The item tower's output [N, tower_dim]."""
        title_mask = (item_title != TITLE_PAD_ID).unsqueeze(2).to(self.item.weight.dtype)  # [N, T, 1]
        title = (self.title(item_title) * title_mask).sum(1) / title_mask.sum(1).clamp(min=1.0)
        item = torch.cat(
            [self.item(item_features[:, 0]), self.year(item_features[:, 1]), self.genres(item_genres), title], dim=1
        )
        return self.item_tower(item)

    def rate(self, user_input: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Ratings [N] from user-tower inputs and item vectors, row by row."""
        u, i = self.user_tower(user_input), item_vectors  # [N, tower_dim] each
        score = self.head(torch.cat([u, i, u * i], dim=1)).squeeze(1)
        span = self.config.rating_max - self.config.rating_min
        return self.config.rating_min + span * torch.sigmoid(score)

    def add_user(self, user_input: torch.Tensor) -> list[int]:
        """Append one user whose tower input is `user_input` [user_input_dim] (one new row in each user
        table); returns its USER_FEATURES row. The exported variants carry the cold-start prior this way."""
        d, q = self.config.embed_dim, self.config.embed_dim // 4
        row = []
        for table, part in zip(
            (self.user, self.age, self.gender, self.occupation),
            (user_input[:d], user_input[d : d + q], user_input[d + q : d + 2 * q], user_input[d + 2 * q :]),
            strict=True,
        ):
            row.append(table.num_embeddings)
            grown = torch.cat([table.weight.data, part.detach().to(table.weight.dtype)[None, :]])
            table.weight = nn.Parameter(grown, requires_grad=table.weight.requires_grad)
            table.num_embeddings += 1
        return row
