"""The ``regularization=`` settings: dropout sites, the AWD-LSTM penalties, coupled L1 and L2
(``lmexp/regularization.py`` applies them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lmexp.options.optimizer import check_exclude
from lmexp.schema import check


@dataclass
class RegularizationConfig:
    # Dropout: `dropout` is the rate of every site left null below; each model has the sites its
    # architecture has (README: "Regularization").
    dropout: float = 0.0
    embed_dropout: float = 0.0  # whole words: every use of a dropped word in the batch is zero
    input_dropout: Optional[float] = None  # the embedded input
    hidden_dropout: Optional[float] = None  # between recurrent layers
    output_dropout: Optional[float] = None  # the last layer's output, before the softmax
    attention_dropout: Optional[float] = None  # attention weights
    residual_dropout: Optional[float] = None  # residual branches and the feed-forward's hidden layer
    locked_dropout: bool = False  # recurrent: one mask per sequence for input/hidden/output (variational)
    weight_drop: float = 0.0  # recurrent: DropConnect on the hidden-to-hidden matrices
    ar: float = 0.0  # recurrent: activation regularization, ar * mean(dropped last-layer output ** 2)
    tar: float = 0.0  # recurrent: temporal AR, tar * mean((h_t - h_{t-1}) ** 2) of the raw output
    l1: float = 0.0  # coupled: l1 * sum(|p|) added to the training loss
    l2: float = 0.0  # coupled: l2 * sum(p ** 2) added to the loss; not the optimizer's (decoupled) weight_decay
    exclude: list[str] = field(default_factory=lambda: ["bias", "norm"])  # kinds l1/l2 skip; or embedding

    RATES = ("dropout", "embed_dropout", "input_dropout", "hidden_dropout", "output_dropout", "attention_dropout",
             "residual_dropout", "weight_drop")
    RECURRENT_ONLY = ("locked_dropout", "weight_drop", "ar", "tar")

    def validate(self, group: str) -> None:
        for key in self.RATES:
            value = getattr(self, key)
            check(value is None or 0.0 <= value < 1.0, f"{group}.{key}", value,
                  "in [0, 1)" if key in ("dropout", "embed_dropout", "weight_drop") else f"in [0, 1), or null for {group}.dropout's")
        for key in ("ar", "tar", "l1", "l2"):
            check(getattr(self, key) >= 0, f"{group}.{key}", getattr(self, key), ">= 0")
        check_exclude(self.exclude, f"{group}.exclude")

    def check_model(self, model: str, recurrent: bool, group: str = "regularization") -> None:
        """The recurrent-only techniques named with a model that has no recurrence are a mistake, not a no-op."""
        for key in self.RECURRENT_ONLY if not recurrent else ():
            value = getattr(self, key)
            check(not value, f"{group}.{key}", value,
                  f"{'false' if isinstance(value, bool) else 0} for model={model}: it applies to recurrent "
                  f"models (rnn, gru, lstm)")

