"""Algorithms: each module holds its config, its loss as a pure function of tensors, and its LightningModule."""
