"""ClientToken idempotency for EC2 query actions.

Follows "Ensuring idempotency in Amazon EC2 API requests" (EC2 API reference):
"If you repeat a request with the same client token and the same parameters,
the API returns the same response" (no new resource) and "If you repeat the
request with the same client token, but change one or more of the parameters
... Amazon EC2 returns an IdempotentParameterMismatch error." A token is scoped
to the account and the Region. Applies to every EC2 action that carries a
ClientToken (RunInstances, CreateVolume, CopyImage, CreateImage in newer
versions of the API, ...); moto accepts the token and ignores it.
"""

import threading


class Idempotency:
    def __init__(self):
        self.lock = threading.Lock()
        # (account, region, action, token) -> (fingerprint, status, headers, body)
        self.seen: dict[tuple, tuple] = {}

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    @staticmethod
    def fingerprint(params: dict[str, list[str]]) -> tuple:
        return tuple(sorted((k, tuple(v)) for k, v in params.items() if k != "ClientToken"))

    def lookup(self, key: tuple, fingerprint: tuple):
        """The earlier response, "mismatch", or None for a new token."""
        with self.lock:
            hit = self.seen.get(key)
        if hit is None:
            return None
        if hit[0] != fingerprint:
            return "mismatch"
        return hit[1:]

    def remember(self, key: tuple, fingerprint: tuple, status: int, headers: list, body: bytes) -> None:
        with self.lock:
            self.seen[key] = (fingerprint, status, headers, body)
