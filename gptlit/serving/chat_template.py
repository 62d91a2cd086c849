"""The plain-text layout that turns a chat (a list of messages) into a prompt for a base model.

A model pretrained on plain text, as every model here is, has no chat format of its own: no special tokens,
no turns. The best it can do is continue a transcript that looks like text it has read, so a chat becomes

    A conversation between a user and an assistant.      <- the system message, or ``system`` when none is given
    User: Hello!
    Assistant: Hi.
    User: How are you?
    Assistant:

and the reply is what the model writes after the last "Assistant:", up to the next line starting with
"User:" (a stop string), a stop string of the request, <|endoftext|>, or max_tokens. Every piece is a setting
(serve.yaml's ``chat``), so the layout can match the text a model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class ChatTemplate:
    system: str = "A conversation between a user and an assistant."
    user: str = "User: "
    assistant: str = "Assistant: "
    separator: str = "\n"
    # Where a reply ends if the model goes on to write the user's next turn itself.
    stop: Sequence[str] = field(default_factory=lambda: ["\nUser:"])

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt of ``messages`` ((role, text) pairs, roles system/user/assistant), ending with the
        assistant's prefix so the model writes the reply. GPT-2's tokens carry their leading space, so the prefix
        ends without one and the reply's first token brings it (the server strips it from the reply)."""
        parts = []
        systems = [text for role, text in messages if role == "system"]
        system = "\n".join(systems) if systems else self.system
        if system:
            parts.append(system)
        for role, text in messages:
            if role == "user":
                parts.append(self.user + text)
            elif role == "assistant":
                parts.append(self.assistant + text)
        parts.append(self.assistant.rstrip())
        return self.separator.join(parts)
