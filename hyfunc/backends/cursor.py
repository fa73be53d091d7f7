"""A template-machine program walked one emitted token at a time.

Our decoder appends a whole injected chunk in one pass; an engine that emits exactly one token
per step per request (vLLM) needs the program the other way round: at every step, which single
token may come next. ``ProgramCursor`` answers that — the next forced token while an injection
is being spelled out, else the pending decision (``Generate``) — and takes back the token the
engine emitted. The same cursor runs in vLLM's engine process (the logits processor) and in
ours (reading the emitted tokens back into calls and counters), so both agree by construction.

The generated-token budgets are checked exactly where the scheduler checks them: after a
decision, before the next one.
"""

from __future__ import annotations

from collections import deque

from hyfunc.cascade.scheduler import Budgets
from hyfunc.cascade.template import Generate, Inject, Program
from hyfunc.schema import Call


class ProgramCursor:
    def __init__(self, program: Program, budgets: Budgets | None = None, call_open_id: int | None = None):
        self.program = program
        self.budgets = budgets or Budgets()
        self.call_open_id = call_open_id
        self.forced: deque[int] = deque()  # injected tokens not emitted yet
        self.pending: Generate | None = None
        self.done = False  # the program returned or failed (forced may still hold its last injection)
        self.calls: list[Call] = []
        self.error: str | None = None
        self.generated = 0
        self.injected = 0
        self.call_tokens = 0
        self.call_number = 0
        self._advance(None)

    @property
    def finished(self) -> bool:
        """Nothing left to emit: the program is done and its last injection spelled out."""
        return self.done and not self.forced

    def next_forced(self) -> int | None:
        """The single token the next step must emit (an injection), or None for a decision."""
        return self.forced[0] if self.forced else None

    def accept(self, token: int) -> None:
        """The engine emitted ``token``: an injected token (checked) or the pending decision."""
        if self.forced:
            expected = self.forced.popleft()
            if token != expected:
                self._fail(f"emitted token {token} where the template injects {expected}")
            return
        if self.done or self.pending is None:
            raise ValueError(f"token {token} emitted after the program ended")
        if not self.pending.permits(token):
            self._fail(f"emitted token {token} is not allowed at this step")
            return
        self.generated += 1
        self.call_tokens += 1
        self._advance(token)
        if not self.done:
            self._check_budgets()

    def fail(self, error: str) -> None:
        self._fail(error)

    def _advance(self, send: int | None) -> None:
        try:
            step = self.program.send(send)
            while isinstance(step, Inject):
                if self.call_open_id is not None and self.call_open_id in step.ids:
                    self.call_number += 1
                    self.call_tokens = 0
                self.forced.extend(step.ids)
                self.injected += len(step.ids)
                step = self.program.send(None)
            self.pending = step
        except StopIteration as stop:
            self.done = True
            self.pending = None
            self.calls = stop.value
        except Exception as err:  # a program that cannot continue fails its own job
            self.done = True
            self.pending = None
            self.error = f"{type(err).__name__}: {err}"

    def _check_budgets(self) -> None:
        job_cap, call_cap = self.budgets.max_job_tokens, self.budgets.max_call_tokens
        if job_cap is not None and self.generated >= job_cap:
            self._fail(f"generated-token budget cascade.max_job_tokens={job_cap} exceeded")
        elif call_cap is not None and self.call_tokens >= call_cap:
            self._fail(f"generated-token budget cascade.max_call_tokens={call_cap} exceeded in call {self.call_number}")

    def _fail(self, error: str) -> None:
        self.done = True
        self.pending = None
        self.forced.clear()
        self.calls = []
        self.error = error
        self.program.close()
