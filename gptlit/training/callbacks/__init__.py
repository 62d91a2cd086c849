"""The callbacks of a training run, one per file; conf/callbacks/default.yaml lists which a run gets."""
