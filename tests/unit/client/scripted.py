"""Drive the client engine's flows with scripted outcomes and a fake clock (no sockets)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raftkv.client.engine import Engine, Flow, MaybeSent, NotSent, Outcome, Send, Sleep
from raftkv.client.options import make_options
from raftkv.client.wire import Reply

T = TypeVar("T")

EP1, EP2, EP3 = "http://n1:1", "http://n2:2", "http://n3:3"


def reply(status: int, body: object = None, **headers: str) -> Reply:
    raw = b"" if body is None else json.dumps(body).encode()
    return Reply(status, {k.lower().replace("_", "-"): v for k, v in headers.items()}, raw)


def error(status: int, code: str, **context: object) -> Reply:
    return reply(status, {"error": code.replace("_", " "), "code": code, **context})


NO_SESSIONS = error(404, "not_found")


@dataclass
class Harness:
    """A fake clock plus a responder; records every Send and Sleep."""

    responder: Callable[[Send], Outcome]
    now: float = 100.0
    sends: list[Send] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def drive(self, flow: Flow[T]) -> T:
        return self._loop(flow, next(flow))

    def drive_from(self, flow: Flow[T], outcome: Outcome) -> T:
        """Continue a started flow: `outcome` answers the action it last yielded."""
        try:
            action = flow.send(outcome)
        except StopIteration as stop:
            result: T = stop.value
            return result
        return self._loop(flow, action)

    def _loop(self, flow: Flow[T], action: Send | Sleep) -> T:
        try:
            while True:
                match action:
                    case Send():
                        self.sends.append(action)
                        self.now += 0.001
                        outcome = self.responder(action)
                    case Sleep(seconds=s):
                        assert s >= 0
                        self.sleeps.append(s)
                        self.now += s
                        outcome = None
                action = flow.send(outcome)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def of(self, method: str, prefix: str = "/kv") -> list[Send]:
        return [s for s in self.sends if s.method == method and s.target.startswith(prefix)]


def engine(h: Harness, endpoints: Sequence[str] = (EP1, EP2, EP3), **options: Any) -> Engine:
    return Engine(make_options(list(endpoints), **options), h.clock)


def script(*outcomes: Outcome) -> Callable[[Send], Outcome]:
    """Answers sends in order; fails the test on an unexpected extra send."""
    queue = list(outcomes)

    def respond(send: Send) -> Outcome:
        assert queue, f"unexpected extra send {send.method} {send.endpoint}{send.target}"
        return queue.pop(0)

    return respond


__all__ = ["MaybeSent", "NotSent"]
