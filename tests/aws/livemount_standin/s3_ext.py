"""S3 requests by name, and S3's cross-account authorization.

moto answers S3 requests by method and path; the front names each the way the
S3 API reference does (PutObject, UploadPart, ...), so that counters and
faults work for S3 as for EC2.

moto lets any account read any other account's bucket (by default), or none
(MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS=false), and never reads a bucket policy.
AWS does: "If the bucket owner and the requester are in different AWS
accounts, ... the bucket owner must have granted the requester permission
through a bucket policy or an ACL" and, for cross-account access, "the
identity-based policy of the requester and the resource-based policy must
both allow the request" (S3 User Guide, "How Amazon S3 authorizes a request";
IAM User Guide, "Cross-account policy evaluation logic"). The extension
evaluates the bucket-owner side: a request from another account than the
bucket's owner is AccessDenied (403) unless a statement of the bucket policy
allows its action on its resource for that account and no statement denies
it. moto's IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT) checks the
requester's side. Statements with a Condition, NotAction, NotResource or
NotPrincipal are not modelled: they never allow, and a Deny among them is
taken to apply (the cautious reading).
"""

import fnmatch
import json
from urllib.parse import parse_qs, unquote

# The IAM action each S3 API action is authorized as (S3 User Guide, "Actions for Amazon S3": HeadObject
# needs s3:GetObject, the multipart actions s3:PutObject, ...).
_IAM_ACTION = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CopyObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "GetBucketLocation": "s3:GetBucketLocation",
    "GetBucketPolicy": "s3:GetBucketPolicy",
    "PutBucketPolicy": "s3:PutBucketPolicy",
    "DeleteBucketPolicy": "s3:DeleteBucketPolicy",
    "CreateBucket": "s3:CreateBucket",
    "DeleteBucket": "s3:DeleteBucket",
}


def target(path: str) -> tuple[str, str]:
    """(bucket, key) of a path-style request."""
    parts = path.lstrip("/").split("/", 1)
    return unquote(parts[0]), unquote(parts[1]) if len(parts) > 1 else ""


def action_of(method: str, path: str, query: str, headers: dict) -> str:
    """The S3 API action of a path-style request."""
    bucket, key = target(path)
    q = parse_qs(query, keep_blank_values=True)
    if not bucket:
        return "ListBuckets"
    if not key:
        for sub, by_method in (
            ("location", {"GET": "GetBucketLocation"}),
            ("policy", {"GET": "GetBucketPolicy", "PUT": "PutBucketPolicy", "DELETE": "DeleteBucketPolicy"}),
            ("uploads", {"GET": "ListMultipartUploads"}),
            ("delete", {"POST": "DeleteObjects"}),
        ):
            if sub in q and method in by_method:
                return by_method[method]
        if method == "GET":
            return "ListObjectsV2" if q.get("list-type") == ["2"] else "ListObjects"
        return {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(method, f"{method} bucket")
    if method == "PUT":
        if "uploadId" in q and "partNumber" in q:
            return "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in {k.lower() for k in headers} else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
    if method == "GET":
        return "ListParts" if "uploadId" in q else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    return f"{method} object"


def fixed_answer(action: str, status: int, headers: list, data: bytes) -> tuple[int, list, bytes]:
    """moto 5.2.1's answer, made as AWS gives it where moto differs.

    CompleteMultipartUpload: "Response Syntax ... <CompleteMultipartUploadResult>" (S3 API reference,
    CompleteMultipartUpload); moto names the root CompleteMultipartUploadResponse (getmoto/moto#10055),
    which the Rust SDK rejects (boto3 does not look).
    """
    if action == "CompleteMultipartUpload" and status == 200:
        data = data.replace(b"<CompleteMultipartUploadResponse", b"<CompleteMultipartUploadResult", 1)
        data = data.replace(b"</CompleteMultipartUploadResponse>", b"</CompleteMultipartUploadResult>", 1)
    return status, headers, data


def bucket_owner(bucket: str) -> str | None:
    from moto.s3.models import s3_backends

    found = s3_backends.bucket_accounts.get(bucket)
    return found[1] if found else None


def _listed(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _principal_matches(principal, account: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for p in _listed(principal.get("AWS")):
        if p in ("*", account, f"arn:aws:iam::{account}:root"):
            return True
    return False


def _matches(patterns, value: str, case_sensitive: bool) -> bool:
    for p in _listed(patterns):
        if case_sensitive and fnmatch.fnmatchcase(value, p):
            return True
        if not case_sensitive and fnmatch.fnmatchcase(value.lower(), p.lower()):
            return True
    return False


def bucket_policy_allows(policy_text: str | None, account: str, action: str, bucket: str, key: str) -> bool:
    """Whether the bucket policy lets `account` make S3 API `action` on the bucket (or its `key`)."""
    if not policy_text:
        return False
    try:
        policy = json.loads(policy_text)
    except ValueError:
        return False
    iam_action = _IAM_ACTION.get(action, f"s3:{action}")
    resource = f"arn:aws:s3:::{bucket}/{key}" if key else f"arn:aws:s3:::{bucket}"
    allowed = False
    for st in _listed(policy.get("Statement")):
        unmodelled = any(k in st for k in ("Condition", "NotAction", "NotResource", "NotPrincipal"))
        applies = (
            _principal_matches(st.get("Principal"), account)
            and _matches(st.get("Action"), iam_action, case_sensitive=False)
            and _matches(st.get("Resource"), resource, case_sensitive=True)
        )
        if st.get("Effect") == "Deny" and (applies or unmodelled):
            return False
        if st.get("Effect") == "Allow" and applies and not unmodelled:
            allowed = True
    return allowed


def cross_account_denied(account: str, action: str, path: str) -> bool:
    """True when `account` is not the bucket's owner and the bucket policy does not allow the request."""
    bucket, key = target(path)
    if not bucket or action in ("CreateBucket", "ListBuckets"):
        return False
    owner = bucket_owner(bucket)
    if owner is None or owner == account:
        return False
    from moto.s3.models import s3_backends

    policy = s3_backends[owner]["aws"].buckets[bucket].policy
    text = policy.decode() if isinstance(policy, bytes) else policy
    return not bucket_policy_allows(text, account, action, bucket, key)
