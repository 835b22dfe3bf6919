"""Request counters and fault injection (the stand-in's own control plane).

Counters: every request that reaches the stand-in is counted per action and per
account before any fault or handler runs. Faults: a rule fails the Nth and
following matching calls (N times, or forever) with an AWS error code and HTTP
status; a throttle rule fails every matching call for S seconds with the
service's throttling error. An `after` rule lets the call be carried out and
then answers the error instead of its result: the reply lost on the way back,
after AWS acted (what a timeout or a dropped connection looks like to a client).
A `corrupt` rule lets the call through and flips one byte of its answer's body
(its headers, checksums included, as sent): damage on the way that only a
client checking the checksum sees. `reason` adds the Reason field that EBS
direct's ValidationException carries (e.g. INVALID_BLOCK_TOKEN).
"""

import threading
import time


class Fault:
    def __init__(self, spec: dict):
        if not spec.get("action"):
            raise ValueError("a fault needs 'action'")
        self.action = spec["action"]
        self.account = spec.get("account")
        self.service = spec.get("service")
        self.throttle_seconds = spec.get("throttle_seconds")
        self.nth = int(spec.get("nth", 1))
        times = spec.get("times", 1 if self.throttle_seconds is None else None)
        self.times = None if times is None else int(times)
        self.code = spec.get("code")
        self.status = spec.get("status")
        self.message = spec.get("message") or "Injected by the livemount AWS stand-in."
        self.after = bool(spec.get("after", False))
        self.corrupt = bool(spec.get("corrupt", False))
        self.reason = spec.get("reason")
        self.installed = time.monotonic()
        self.seen = 0
        self.fired = 0
        if self.throttle_seconds is None and not self.code and not self.corrupt:
            raise ValueError("a fault needs 'code' (or 'throttle_seconds', or 'corrupt')")

    def matches(self, service: str, action: str, account: str) -> bool:
        return (
            action == self.action
            and (self.account is None or self.account == account)
            and (self.service is None or self.service == service)
        )

    def fire(self, service: str) -> "Hit | None":
        """Count one matching call; what to do to it, or None to let it pass."""
        self.seen += 1
        if self.throttle_seconds is not None:
            if time.monotonic() - self.installed >= float(self.throttle_seconds):
                return None
            code = self.code or ("RequestLimitExceeded" if service == "ec2" else "ThrottlingException")
            status = self.status or (503 if service == "ec2" else 400)
            self.fired += 1
            return Hit(code, "Request limit exceeded." if service == "ec2" else "Rate exceeded", status)
        if self.seen < self.nth:
            return None
        if self.times is not None and self.fired >= self.times:
            return None
        self.fired += 1
        return Hit(self.code, self.message, int(self.status or 400), self.after, self.corrupt, self.reason)

    def to_json(self) -> dict:
        return {
            "action": self.action,
            "account": self.account,
            "service": self.service,
            "nth": self.nth,
            "times": self.times,
            "code": self.code,
            "status": self.status,
            "throttle_seconds": self.throttle_seconds,
            "after": self.after,
            "corrupt": self.corrupt,
            "reason": self.reason,
            "seen": self.seen,
            "fired": self.fired,
        }


class Hit:
    """What a fault does to one call: answer an error (after carrying the call out, with `after`), or
    carry it out and damage its answer (`corrupt`)."""

    def __init__(self, code, message, status, after=False, corrupt=False, reason=None):
        self.code, self.message, self.status = code, message, status
        self.after, self.corrupt, self.reason = after, corrupt, reason


class Control:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}
        self.faults: list[Fault] = []
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.seconds.clear()
            self.faults.clear()

    def count(self, action: str, account: str) -> None:
        with self.lock:
            per = self.counts.setdefault(action, {})
            per[account] = per.get(account, 0) + 1

    def spent(self, action: str, seconds: float) -> None:
        """Time the stand-in spent answering a call (its data plane's copies included), so that a benchmark
        can tell the client's own time from the stand-in's."""
        with self.lock:
            self.seconds[action] = self.seconds.get(action, 0.0) + seconds

    def counters(self) -> dict:
        with self.lock:
            actions = {a: dict(per) for a, per in self.counts.items()}
            seconds = dict(self.seconds)
        return {"actions": actions, "total": sum(sum(p.values()) for p in actions.values()), "seconds": seconds}

    def add_faults(self, doc) -> list[dict]:
        specs = doc if isinstance(doc, list) else doc.get("faults", [doc])
        new = [Fault(s) for s in specs]
        with self.lock:
            self.faults.extend(new)
        return [f.to_json() for f in new]

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def list_faults(self) -> list[dict]:
        with self.lock:
            return [f.to_json() for f in self.faults]

    def check(self, service: str, action: str, account: str):
        with self.lock:
            for fault in self.faults:
                if fault.matches(service, action, account):
                    hit = fault.fire(service)
                    if hit:
                        return hit
        return None
