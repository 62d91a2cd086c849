"""Training with Lightning: the LightningModule, the Trainer with batches in tokens, optimizer, schedule, loggers; callbacks/ one per file."""
