"""livemount's local AWS stand-in: moto 5.2.1 extended in its own process.

The pieces: `server` (command line, WSGI front, control endpoints), `blocks`
(the block data plane under --data), `ebs_direct` (EBS direct APIs over that
data plane), `ec2_ext` (patches on moto's EC2 models: sharing visibility,
data plane hooks, attachments), `idempotency` (ClientToken), `control`
(counters and fault injection), `awserr` (AWS error bodies per protocol).
"""
