"""Checks moto_server.py's CreateThing correction and its CA against a live server.

Starts tests/moto/moto_server.py on a free port of 127.0.0.1 with the Python that runs this
script (the one with moto[server], which brings boto3), and checks through boto3 that CreateThing
behaves as AWS IoT documents it: the same name and configuration returns the existing thing, the
same name with a different configuration answers 409 ResourceAlreadyExistsException. Then that
the CA certificate the server wrote to MOTO_IOT_CA_FILE is a CA and that a certificate
CreateCertificateFromCsr issued is signed by it, for the CSR's key.
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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


def check_ca(iot, ca_path):
    with open(ca_path, "rb") as pem:
        ca = x509.load_pem_x509_certificate(pem.read())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    check(
        "MOTO_IOT_CA_FILE holds a self-signed CA certificate (BasicConstraints CA, KeyCertSign)",
        constraints.ca and usage.key_cert_sign and ca.subject == ca.issuer,
        f"subject {ca.subject.rfc4514_string()}, CA {constraints.ca}, keyCertSign {usage.key_cert_sign}",
    )
    ca.verify_directly_issued_by(ca)

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "device-1")]))
        .sign(key, hashes.SHA256())
    )
    issued = iot.create_certificate_from_csr(
        certificateSigningRequest=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        setAsActive=True,
    )
    certificate = x509.load_pem_x509_certificate(issued["certificatePem"].encode("ascii"))
    try:
        certificate.verify_directly_issued_by(ca)
        verified = ""
    except (ValueError, TypeError) as error:
        verified = str(error) or type(error).__name__
    check("a CreateCertificateFromCsr certificate verifies against that CA", not verified, verified)
    raw_key = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    check(
        "  and certifies the CSR's public key",
        certificate.public_key().public_bytes(*raw_key) == key.public_key().public_bytes(*raw_key),
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    check(
        "  and its certificate id is the SHA-256 of its DER",
        issued["certificateId"] == digest.finalize().hex(),
        issued["certificateId"],
    )


def main():
    port = free_port()
    log = tempfile.TemporaryFile()
    ca_dir = tempfile.TemporaryDirectory()
    ca_path = os.path.join(ca_dir.name, "moto-iot-ca.pem")
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MOTO_IOT_CA_FILE": ca_path},
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
        check_ca(iot, ca_path)
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
        ca_dir.cleanup()
    print(f"test_moto_server: all checks passed ({SERVER.name} on 127.0.0.1:{port})")


if __name__ == "__main__":
    main()
