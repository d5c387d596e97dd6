"""Early stopping with confirmation epochs; its state goes into the checkpoint so `--resume` restores it."""

import math


class EarlyStopping:
    """Stop after `patience` epochs without a lower validation loss, then confirm with `extra_epochs` more.

    A new best validation loss during the confirmation epochs cancels the stop and training goes on
    as normal; otherwise training stops when they are used up.
    """

    def __init__(self, patience: int = 3, extra_epochs: int = 2, min_delta: float = 0.0):
        self.patience, self.extra_epochs, self.min_delta = patience, extra_epochs, min_delta
        self.best = math.inf
        self.bad_epochs = 0      # epochs since the last improvement
        self.pending = False     # patience is used up; confirmation epochs are running
        self.confirmed = 0       # confirmation epochs done

    def step(self, val_loss: float) -> str:
        """Record an epoch's validation loss.

        Returns 'improved', 'waiting', 'patience_out' (confirmation starts), 'confirming', 'resumed'
        (improved during confirmation) or 'stop'.
        """
        if val_loss < self.best - self.min_delta:
            resumed = self.pending
            self.best, self.bad_epochs, self.pending, self.confirmed = val_loss, 0, False, 0
            return "resumed" if resumed else "improved"
        self.bad_epochs += 1
        if self.pending:
            self.confirmed += 1
            return "stop" if self.confirmed >= self.extra_epochs else "confirming"
        if self.bad_epochs >= self.patience:
            self.pending = True
            return "stop" if self.extra_epochs == 0 else "patience_out"
        return "waiting"

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "pending": self.pending, "confirmed": self.confirmed}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.pending, self.confirmed = state["pending"], state["confirmed"]

    def describe(self, status: str) -> str:
        return {"improved": "improved (best so far, saved)",
                "resumed": "improved during confirmation: training goes on (saved)",
                "waiting": f"no improvement ({self.bad_epochs}/{self.patience})",
                "patience_out": f"no improvement ({self.bad_epochs}/{self.patience}): "
                                f"{self.extra_epochs} confirmation epoch(s) follow",
                "confirming": f"no improvement: confirmation epoch {self.confirmed}/{self.extra_epochs}",
                "stop": "no improvement: early stop confirmed"}[status]
