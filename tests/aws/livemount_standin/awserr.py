"""AWS error responses in the shape each protocol's SDK parses.

EC2 (ec2 query protocol): <Response><Errors><Error><Code>..</Code><Message>..
STS/IAM and other query services: <ErrorResponse><Error><Type>Sender</Type>...
rest-json services (EBS direct): x-amzn-ErrorType header + JSON body.
"""

import json
import uuid
from xml.sax.saxutils import escape


def error_response(service: str, code: str, message: str, status: int = 400, extra: dict | None = None):
    """(status, headers, body bytes) for an AWS error of the given service."""
    request_id = str(uuid.uuid4())
    if service == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()
    if service in ("ebs",):
        doc = {"__type": code, "message": message, "Message": message}
        doc.update({k: v for k, v in (extra or {}).items() if v is not None})
        headers = [
            ("Content-Type", "application/json"),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", request_id),
        ]
        return status, headers, json.dumps(doc).encode()
    if service == "s3":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        return status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], body.encode()
    kind = "Receiver" if status >= 500 else "Sender"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error>'
        f"<Type>{kind}</Type><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()


class AwsError(Exception):
    """Raised by the stand-in's own handlers; turned into error_response()."""

    def __init__(self, code: str, message: str, status: int = 400, **extra):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra
