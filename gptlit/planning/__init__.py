"""Planning a run before it runs: FLOPs per token, memory and step time, the precision the device trains fastest in."""
