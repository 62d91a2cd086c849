"""The book's exact paths: what experiment=book_ch5 and experiment=book_appendix_d need beyond the shared code."""
