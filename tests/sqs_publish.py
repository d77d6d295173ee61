"""Publish to the datastream SQS queue exactly as the original service's README does.

Usage: sqs_publish.py --queue NAME (--fixture FILE | --raw BODY | --site S --topic T --data JSON)

`--fixture` sends the file's text as the body. `--raw` sends BODY as is (for malformed bodies).
`--site/--topic/--data` builds the payload and sends json.dumps(payload), like the README example.
Endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL_SQS, ...).
"""
import argparse
import json

import boto3


def get_queue_url(queue_name: str) -> str:
    sqs_client = boto3.client("sqs", region_name="us-east-1")
    response = sqs_client.get_queue_url(QueueName=queue_name)
    return response["QueueUrl"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--queue", required=True)
    p.add_argument("--fixture")
    p.add_argument("--raw")
    p.add_argument("--site")
    p.add_argument("--topic")
    p.add_argument("--data")
    a = p.parse_args()
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue_url = get_queue_url(a.queue)
    if a.fixture:
        with open(a.fixture) as f:
            body = f.read()
    elif a.raw is not None:
        body = a.raw
    else:
        payload = {"topic": a.topic, "site": a.site, "data": json.loads(a.data)}
        body = json.dumps(payload)
    sqs.send_message(QueueUrl=queue_url, MessageBody=body)


if __name__ == "__main__":
    main()
