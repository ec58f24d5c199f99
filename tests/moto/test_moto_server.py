"""Checks moto_server.py's CreateThing correction against a live server.

Starts tests/moto/moto_server.py on a free port of 127.0.0.1 with the Python that runs this
script (the one with moto[server], which brings boto3), and checks through boto3 that CreateThing
behaves as AWS IoT documents it: the same name and configuration returns the existing thing, the
same name with a different configuration answers 409 ResourceAlreadyExistsException.
Prints each check; exits non-zero on the first failure (and then prints the server's log;
MOTO_TEST_VERBOSE=1 prints it always).

Usage: .venv/bin/python tests/moto/test_moto_server.py
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

SERVER = Path(__file__).resolve().with_name("moto_server.py")
REGION = "eu-west-1"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server.py exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server.py did not listen on port {port} within {timeout}s")


def check(description, condition, detail=""):
    if not condition:
        print(f"FAIL {description}" + (f": {detail}" if detail else ""))
        sys.exit(1)
    print(f"ok   {description}")


def expect_already_exists(description, call):
    try:
        answer = call()
    except ClientError as error:
        code = error.response["Error"]["Code"]
        status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        message = error.response["Error"].get("Message", "")
        check(
            description,
            code == "ResourceAlreadyExistsException" and status == 409,
            f"answered {status} {code}: {message}",
        )
        return message
    check(description, False, f"succeeded: {answer}")


def run(iot):
    # (1) Twice with no configuration: the same thing both times.
    first = iot.create_thing(thingName="plain")
    second = iot.create_thing(thingName="plain")
    check(
        "CreateThing twice, no attributes: same thingId and thingArn",
        (first["thingId"], first["thingArn"]) == (second["thingId"], second["thingArn"]),
        f"{first['thingId']} then {second['thingId']}",
    )
    # An empty attributePayload is no attributes.
    third = iot.create_thing(thingName="plain", attributePayload={})
    fourth = iot.create_thing(thingName="plain", attributePayload={"attributes": {}})
    check(
        "CreateThing with an empty attributePayload / empty attributes: same thingId",
        first["thingId"] == third["thingId"] == fourth["thingId"],
        f"{first['thingId']}, {third['thingId']}, {fourth['thingId']}",
    )
    described = iot.describe_thing(thingName="plain")
    check(
        "DescribeThing after the repeats: the original thing, version 1",
        described["thingId"] == first["thingId"] and described["version"] == 1,
        f"thingId {described['thingId']}, version {described['version']}",
    )

    # (2) A principal attached after the first create survives a repeated create.
    certificate_arn = iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    iot.attach_thing_principal(thingName="plain", principal=certificate_arn)
    again = iot.create_thing(thingName="plain")
    principals = iot.list_thing_principals(thingName="plain")["principals"]
    check(
        "principal attached before a repeated CreateThing is still listed",
        again["thingId"] == first["thingId"] and principals == [certificate_arn],
        f"thingId {again['thingId']}, principals {principals}",
    )

    # (3) The same name with attributes the thing does not have: 409.
    message = expect_already_exists(
        'CreateThing "plain" again with attributes {"a": "b"}: 409 ResourceAlreadyExistsException',
        lambda: iot.create_thing(thingName="plain", attributePayload={"attributes": {"a": "b"}}),
    )
    check("  its message names the thing", "plain" in message, message)
    described = iot.describe_thing(thingName="plain")
    check(
        "  and the thing is unchanged (same thingId, no attributes)",
        described["thingId"] == first["thingId"] and described["attributes"] == {},
        f"thingId {described['thingId']}, attributes {described['attributes']}",
    )

    # (4) A new name with attributes, then the same again: the same thing.
    with_attributes = iot.create_thing(thingName="tagged", attributePayload={"attributes": {"a": "b"}})
    repeated = iot.create_thing(thingName="tagged", attributePayload={"attributes": {"a": "b"}})
    check(
        'CreateThing "tagged" twice with attributes {"a": "b"}: same thingId',
        with_attributes["thingId"] == repeated["thingId"],
        f"{with_attributes['thingId']} then {repeated['thingId']}",
    )
    expect_already_exists(
        'CreateThing "tagged" with attributes {"a": "c"}: 409 ResourceAlreadyExistsException',
        lambda: iot.create_thing(thingName="tagged", attributePayload={"attributes": {"a": "c"}}),
    )
    expect_already_exists(
        'CreateThing "tagged" with no attributes: 409 ResourceAlreadyExistsException',
        lambda: iot.create_thing(thingName="tagged"),
    )

    # Thing type and billing group are configuration too.
    iot.create_thing_type(thingTypeName="sensor")
    typed = iot.create_thing(thingName="typed", thingTypeName="sensor")
    check(
        'CreateThing "typed" twice with thing type "sensor": same thingId',
        typed["thingId"] == iot.create_thing(thingName="typed", thingTypeName="sensor")["thingId"],
    )
    expect_already_exists(
        'CreateThing "typed" without its thing type: 409 ResourceAlreadyExistsException',
        lambda: iot.create_thing(thingName="typed"),
    )
    iot.create_billing_group(billingGroupName="fleet")
    billed = iot.create_thing(thingName="billed", billingGroupName="fleet")
    check(
        'CreateThing "billed" twice in billing group "fleet": same thingId',
        billed["thingId"] == iot.create_thing(thingName="billed", billingGroupName="fleet")["thingId"],
    )
    expect_already_exists(
        'CreateThing "billed" without its billing group: 409 ResourceAlreadyExistsException',
        lambda: iot.create_thing(thingName="billed"),
    )


def main():
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    passed = False
    try:
        wait_for_port(port, process)
        iot = boto3.client(
            "iot",
            region_name=REGION,
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        run(iot)
        passed = True
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not passed or os.environ.get("MOTO_TEST_VERBOSE"):
            log.seek(0)
            sys.stderr.write("--- moto_server.py log\n" + log.read().decode(errors="replace"))
        log.close()
    print(f"test_moto_server: all checks passed ({SERVER.name} on 127.0.0.1:{port})")


if __name__ == "__main__":
    main()
