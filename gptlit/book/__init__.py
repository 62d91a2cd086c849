"""The book's exact paths: what experiment=book_ch5 and experiment=book_appendix_d need beyond the shared code.

Here: the book's evaluation schedule (schedule.py). Options of the shared code, each marked with a pointer here:
``model.kernels=book`` (gptlit/core/model.py: the book's formulas and order of operations) and the book's shuffle
and evaluation order (gptlit/data/text.py). The book's own package is the reference in tests/book/ and bench/.
"""
