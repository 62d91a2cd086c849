"""Training with Lightning: the LightningModule, its callbacks, precision, throughput and interruption."""
