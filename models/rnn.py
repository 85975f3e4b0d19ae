"""Text classifiers: token embedding + (bi)LSTM over variable-length, packed sequences.

LSTM rather than GRU because ONNX Runtime's dynamic INT8 quantisation has a kernel for
LSTM (DynamicQuantizeLSTM) and none for GRU. The sequences are packed in PyTorch and the
ONNX export keeps the sequence axis dynamic, passing lengths as `sequence_lens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD_ID = 0
UNK_ID = 1


@dataclass(frozen=True)
class RNNConfig:
    vocab_size: int
    num_classes: int = 2
    embed_dim: int = 128  # no pretrained vectors offline, so the embedding is learnt from ~10k snippets
    hidden_size: int = 256  # per direction; the LSTM is most of the latency
    bidirectional: bool = True
    dropout: float = 0.4  # on embeddings and pooled features; the corpus is small and overfits fast


class TextClassifier(nn.Module):
    """TOKENS [N, T] int64 (PAD_ID-padded), LENGTHS [N] int64 -> LOGITS [N, num_classes].

    Pools the LSTM outputs over the real (unpadded) positions with both max and mean.
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size, batch_first=True, bidirectional=config.bidirectional)
        features = config.hidden_size * (2 if config.bidirectional else 1) * 2  # max + mean pooling
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(features, config.num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.dropout(self.embedding(tokens))  # [N, T, E]
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=tokens.shape[1])  # [N, T, H*D]
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        valid = (positions < lengths.unsqueeze(1)).unsqueeze(2)  # [N, T, 1]
        max_pooled = outputs.masked_fill(~valid, -1e4).amax(dim=1)
        mean_pooled = outputs.sum(dim=1) / lengths.unsqueeze(1).to(outputs.dtype)  # padded outputs are zeros
        return self.head(self.dropout(torch.cat([max_pooled, mean_pooled], dim=1)))
