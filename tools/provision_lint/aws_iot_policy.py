"""Create the device IoT policy that infra/aws makes once per account, in moto (AWS_ENDPOINT_URL).

    AWS_REGION=... AWS_ENDPOINT_URL=... AWS_IOT_POLICY=name python -m provision_lint.aws_iot_policy

Run with the project venv's Python (boto3 comes with moto); scripts/schemathesis runs it before
it starts provision-cloudrun against moto.
"""

from __future__ import annotations

import json
import os
import sys

DOCUMENT = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}


def create(client, name: str) -> None:
    client.create_policy(policyName=name, policyDocument=json.dumps(DOCUMENT))


def main() -> int:
    import boto3

    iot = boto3.client("iot", region_name=os.environ["AWS_REGION"], endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    create(iot, os.environ["AWS_IOT_POLICY"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
