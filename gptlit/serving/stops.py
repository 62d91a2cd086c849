"""Tokens to text, piece by piece, ending at the first stop string.

A stop string may arrive split over several tokens, and a character over several bytes (tokens). Text that
could still turn out to be the start of a stop string is held back until it is known not to be, so a
streaming client never receives text that the complete response would not contain.
"""

from __future__ import annotations

import codecs
from typing import Sequence

from gptlit.core.tokenizer import Tokenizer




class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded, not yet handed out
        self.stopped = False
        self.tokens = 0  # tokens read, up to and including the one that completed a stop string

    def feed(self, token_id: int) -> str:
        """The text that ``token_id`` makes certain; once a stop string is complete, ``stopped`` is set and
        the text before it is the last piece."""
        if self.stopped:
            return ""
        self.tokens += 1
        self.pending += self.decoder.decode(self.tokenizer.token_bytes(token_id))
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = self._held_back()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def close(self) -> str:
        """The rest of the text when decoding ended without a stop string."""
        if self.stopped:
            return ""
        out = self.pending + self.decoder.decode(b"", final=True)
        self.pending = ""
        return out

    def _first_stop(self) -> int | None:
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest end of ``pending`` that begins some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(s[:n]):
                    longest = n
                    break
        return longest
