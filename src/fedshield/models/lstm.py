r"""LSTM language model for next-word prediction (the Reddit task of Bagdasaryan et al., 2020).

Embedding - stacked LSTM (``batch_first``) - linear decoder over the vocabulary, applied to the
last time step: the logits of the word that follows the input window.

Inputs are token ids, shape ``(batch, sequence_length)``. The experiment casts every dataset's
``x`` to the run's floating precision (images need it), so :meth:`LSTMLanguageModel.forward`
accepts float tensors holding integer values and casts them with ``.long()``; ids below
:math:`2^{24}` are exact in float32, far above any vocabulary used here.

With ``tie_weights`` the decoder reuses the embedding matrix [Press and Wolf, 2017]: the
output layer is ``F.linear(h, embedding.weight, decoder_bias)``, so the tied matrix is *one*
Parameter and *one* ``state_dict`` entry. (A ``nn.Linear`` whose ``weight``
is set to the embedding's would list the same tensor under two names in ``state_dict``, and
the flat parameter vector that aggregation rules see, built from ``state_dict``, would hold it
twice.)

Press, Wolf. "Using the Output Embedding to Improve Language Models." EACL 2017.
https://arxiv.org/abs/1608.05859
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_INIT_RANGE = 0.1


def _require_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name} must be an integer >= 1; got {name}={value!r}")
    return value


class LSTMLanguageModel(nn.Module):
    """Next-word prediction: embedding, LSTM, linear decoder from the last time step.

    Parameters
    ----------
    input_shape : tuple of int
        ``(sequence_length,)``.
    num_classes : int
        Vocabulary size (the embedding's rows and the decoder's outputs).
    embedding_dim : int
    hidden_size : int
    num_layers : int
        Stacked LSTM layers.
    tie_weights : bool
        Share the embedding matrix with the decoder; needs ``embedding_dim == hidden_size``.
    dropout : float
        In [0, 1): dropout on the embeddings, between LSTM layers and before the decoder.

    Raises
    ------
    ValueError
        If ``input_shape`` is not ``(sequence_length,)``, a size is not a positive integer,
        ``dropout`` is outside [0, 1), or ``tie_weights`` with ``embedding_dim !=
        hidden_size`` (the message names both fields).
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 2,
        tie_weights: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
            raise ValueError(f"LSTMLanguageModel needs input_shape=(sequence_length,) of token ids; got {shape}")
        for name, value in (
            ("num_classes", num_classes),
            ("embedding_dim", embedding_dim),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            _require_positive_int(name, value)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1); got dropout={dropout!r}")
        if tie_weights and embedding_dim != hidden_size:
            raise ValueError(
                "model.tie_weights=true needs model.embedding_dim == model.hidden_size; got "
                f"embedding_dim={embedding_dim}, hidden_size={hidden_size}"
            )
        self.tie_weights = bool(tie_weights)
        self.embedding = nn.Embedding(num_classes, embedding_dim)
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        nn.init.uniform_(self.embedding.weight, -_INIT_RANGE, _INIT_RANGE)
        if self.tie_weights:
            self.decoder_bias = nn.Parameter(torch.zeros(num_classes))
        else:
            self.decoder = nn.Linear(hidden_size, num_classes)
            nn.init.uniform_(self.decoder.weight, -_INIT_RANGE, _INIT_RANGE)
            nn.init.zeros_(self.decoder.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """The decoder's ``(num_classes, hidden_size)`` matrix (the embedding's when tied)."""
        return self.embedding.weight if self.tie_weights else self.decoder.weight

    @property
    def output_bias(self) -> nn.Parameter:
        return self.decoder_bias if self.tie_weights else self.decoder.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` of the next word after each ``(sequence_length,)`` row.

        ``x`` holds token ids, as an integer tensor or a float tensor of integer values.
        """
        embedded = self.dropout(self.embedding(x.long()))
        outputs, _ = self.lstm(embedded)
        last = self.dropout(outputs[:, -1])
        return F.linear(last, self.output_weight, self.output_bias)
