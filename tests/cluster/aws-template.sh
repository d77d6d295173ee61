#!/usr/bin/env bash
# Validates the AWS template offline: cfn-lint (CloudFormation's schema and rules for every
# resource type), then the settings the relay depends on, which a schema cannot know.
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
cd "$ROOT"
TEMPLATE=deploy/aws/datastream.yaml

"$DATASTREAM_TEST_VENV/bin/cfn-lint" "$TEMPLATE"

"$DATASTREAM_TEST_VENV/bin/python3" - "$TEMPLATE" <<'PY'
import sys
from cfnlint.decode import decode
template, errors = decode(sys.argv[1])
assert not errors, errors
r = template["Resources"]

def attrs(props, key):
    return {a["Key"]: a["Value"] for a in props[key]}

# WebSockets through the ALB: idle timeout above the relay's 25 s ping interval.
lb = attrs(r["LoadBalancer"]["Properties"], "LoadBalancerAttributes")
assert int(lb["idle_timeout.timeout_seconds"]) > 25, lb
# Health checks on /readyz (503 while draining or when Redis/SQS are unreachable).
tg = r["TargetGroup"]["Properties"]
assert tg["HealthCheckPath"] == "/readyz" and tg["Matcher"]["HttpCode"] == "200", tg
# Deregistration outlasts the relay's drain window + shutdown timeout (3 s + 10 s).
assert int(attrs(tg, "TargetGroupAttributes")["deregistration_delay.timeout_seconds"]) > 13
# The queue keeps the original's name and redrive (DLQ after 5 receives).
q = r["IncomingQueue"]["Properties"]
assert q["QueueName"] == {"Fn::Sub": "datastreamIncomingQueue-${Stage}"}, q["QueueName"]
assert q["RedrivePolicy"]["maxReceiveCount"] == 5
# Least privilege: the task may receive and delete on the one queue, and nothing else.
statements = [s for p in r["TaskRole"]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
assert statements == [{"Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
                       "Resource": {"Fn::GetAtt": ["IncomingQueue", "Arn"]}}], statements
assert "ManagedPolicyArns" not in r["TaskRole"]["Properties"]
# Secrets come from Secrets Manager, never as plain environment values.
c = r["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
env = {e["Name"]: e["Value"] for e in c["Environment"]}
secrets = [s for s in c["Secrets"] if isinstance(s, dict) and "Name" in s]
assert [s["Name"] for s in secrets] == ["DATASTREAM_PUBLISH_TOKEN"], secrets
assert "DATASTREAM_PUBLISH_TOKEN" not in env and "DATASTREAM_JWT_SECRET" not in env
# The ALB's X-Forwarded-For is trusted from the VPC only; Redis and the queue are wired in.
assert env["DATASTREAM_TRUSTED_PROXIES"] == {"Ref": "VpcCidr"}, env
assert env["DATASTREAM_SQS_QUEUE"] == {"Ref": "IncomingQueue"}
assert "DATASTREAM_REDIS_URL" in env
# Redis traffic is encrypted: ElastiCache in-transit encryption on, the relay's URL rediss://.
assert r["Redis"]["Properties"]["TransitEncryptionEnabled"] is True
assert env["DATASTREAM_REDIS_URL"]["Fn::Sub"].startswith("rediss://"), env["DATASTREAM_REDIS_URL"]
# Rolling deployments start new tasks before stopping old ones.
dc = r["Service"]["Properties"]["DeploymentConfiguration"]
assert dc["MinimumHealthyPercent"] >= 100 and dc["MaximumPercent"] >= 200, dc
print("AWS template: cfn-lint clean; WebSocket, health check, drain, queue, IAM, secrets and Redis TLS settings ok")
PY
