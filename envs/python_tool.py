"""The `python` environment: tool-integrated reasoning with a Python interpreter.

When a model turn ends with a complete fenced ```python block (the turn stopped at the closing
fence, or ended there with EOS), the block runs in the code sandbox (`rewards.sandbox`, the one the
code reward uses: its own namespaces, no network, no trainer files) and its stdout comes back as

    ```output
    <stdout, or the exception's last line; cut to env.max_output_chars>
    ```

A turn that stopped at an opening fence, or was cut inside a block, goes on (nothing appended),
and the block is read across those turns. A turn without a code block at
its end is the model's answer: the trajectory is done. Each call is a fresh interpreter: nothing
carries over between calls (a model that wants a variable again writes it again).
"""
from __future__ import annotations

import re

from envs.base import Observation, ToolLimits
from rewards.sandbox import SandboxLimits, run

# A complete block at the very end of the turn: the code between an opening fence and the last one.
_TRAILING_BLOCK = re.compile(r"```(?:python|py|python3)[ \t]*\n(.*?)\n?```\s*$", re.DOTALL)
_STATUS_NOTE = {"timeout": "[timed out]", "output_limit": "[output limit exceeded]"}


def output_block(stdout: str, status: str, max_chars: int) -> str:
    """What the model sees after a call: stdout (cut to max_chars) or a note for a call cut off."""
    text = stdout if status in ("ok", "error") else _STATUS_NOTE[status]
    if len(text) > max_chars:
        text = text[:max_chars] + "\n[... cut]"
    if not text.strip():
        text = "[no output: print() what you want to see]"
    return f"```output\n{text.rstrip()}\n```\n"


class PythonTool:
    stop = ("```\n",)  # the closing fence; an opening fence without a language also matches (see step)

    def __init__(self, question: str, answer: str, limits: ToolLimits):
        self.limits = SandboxLimits(timeout_s=limits.timeout_s, memory_mb=limits.memory_mb,
                                    output_bytes=max(4 * limits.max_output_chars, 4096), isolation=limits.isolation)
        self.max_chars = limits.max_output_chars
        # What the model wrote since the last observation: a block can span turns (a turn cut at
        # env.max_turn_tokens, or stopped at an opening fence, goes on in the next one).
        self.written = ""

    def step(self, turn: str, ended: bool) -> Observation | None:
        self.written += turn
        block = _TRAILING_BLOCK.search(self.written)
        if block is None:
            # An odd number of fences: a block is open (the stop string matched an opening fence, or
            # the turn was cut inside the code); let the model finish it.
            return Observation("") if not ended and self.written.count("```") % 2 == 1 else None
        self.written = ""
        res = run(block.group(1), "", self.limits, mode="tool")
        return Observation(output_block(res.stdout, res.status, self.max_chars), tool=res.status)
