"""Corpora as LightningDataModules: one text file (the book's pipeline) or many files through a token cache."""
