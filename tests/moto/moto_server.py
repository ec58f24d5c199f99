"""moto_server with three corrections and one setting, each making moto do what AWS IoT does,
and the CA that signs the certificates it issues:

* CreateCertificateFromCsr issues the certificate for the CSR's own public key;
* DeleteCertificate with forceDelete also removes the certificate's policy attachments;
* CreateThing on an existing name returns that thing when the configuration is the same and
  answers 409 ResourceAlreadyExistsException when it differs;
* certificate ids are the SHA-256 of the certificate's DER (moto's `iot.use_valid_cert`).

moto (5.2.x) answers CreateCertificateFromCsr with a certificate for a fresh RSA key it makes
itself and throws away, keeping only the CSR's subject. Real AWS IoT signs the public key in the
CSR (that is the point of the call: the device keeps its private key). Without this correction
no key a client holds could ever match the certificate it was issued.

moto (5.2.x) force-deletes a certificate but keeps its policy attachments; every later
DeleteCertificate in the account then looks those up, finds no certificate, and answers 404
ResourceNotFound for a certificate that exists.

moto (5.2.x) answers CreateThing on an existing name by replacing the thing with a new one (new
thingId, version 1). Real AWS IoT: "If this call is made multiple times using the same thing
name and configuration, the call will succeed. If this call is made with the same thing name but
different configuration a ResourceAlreadyExistsException is thrown." The configuration is the
thing type, the attributes (a missing or empty attributePayload is no attributes) and the
billing group; the thing returned is the existing one, unchanged. Everything else is moto's.

CreateCertificateFromCsr signs with a key made at start, as "moto emulated AWS IoT CA". Real AWS
IoT signs with Amazon's own CA, which devices never need (the broker knows its own
certificates); tests that stand in for the AWS IoT broker do need it, to check that a client
certificate is one the account issued. The CA's self-signed certificate (BasicConstraints CA,
KeyCertSign) is written as PEM to the file MOTO_IOT_CA_FILE names, when set, before the server
starts.

Usage: python moto_server.py [moto_server options]   (e.g. -H 127.0.0.1 -p 5000)
"""

import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from moto.core.config import default_user_config
from moto.iot.exceptions import InvalidRequestException, ResourceAlreadyExistsException
from moto.iot.models import IoTBackend
from moto.server import main

# Certificate ids as AWS IoT makes them: the SHA-256 of the certificate's DER (moto's default
# hashes the PEM text, for backward compatibility with its own tests).
default_user_config.setdefault("iot", {})["use_valid_cert"] = True

_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "moto emulated AWS IoT CA")])


def _make_ca_certificate():
    """The CA's self-signed certificate, for the key that signs every issued certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = _CA_KEY.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(_CA_KEY, hashes.SHA256())
    )


_CA_CERTIFICATE = _make_ca_certificate()


def write_ca_certificate(path):
    """Writes the CA certificate's PEM to `path` (through a temporary file: a reader never sees
    half of it)."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as out:
        out.write(_CA_CERTIFICATE.public_bytes(serialization.Encoding.PEM))
    os.replace(temporary, path)


def create_certificate_from_csr(self, csr, set_as_active):
    try:
        request = x509.load_pem_x509_csr(csr.encode("utf-8"))
    except ValueError:
        raise InvalidRequestException("The certificate signing request is not valid PEM PKCS#10.")
    if not request.is_signature_valid:
        raise InvalidRequestException("The certificate signing request signature does not verify.")
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(_CA_NAME)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_CA_KEY.public_key()), critical=False
        )
        .sign(_CA_KEY, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return self.register_certificate(pem, ca_certificate_pem=None, set_as_active=set_as_active, status="INACTIVE")


IoTBackend.create_certificate_from_csr = create_certificate_from_csr

_moto_delete_certificate = IoTBackend.delete_certificate


def delete_certificate(self, certificate_id, force_delete):
    arn = self.describe_certificate(certificate_id).arn
    _moto_delete_certificate(self, certificate_id, force_delete)
    for attachment in [key for key in self.principal_policies if key[0] == arn]:
        del self.principal_policies[attachment]


IoTBackend.delete_certificate = delete_certificate

_moto_create_thing = IoTBackend.create_thing

# The configuration is compared with the thing as it is now (UpdateThing and billing-group calls
# change it); the 409's message is the one real AWS IoT words for this case.

def create_thing(self, thing_name, thing_type_name, attribute_payload, billing_group_name=None):
    existing = next((thing for thing in self.things.values() if thing.thing_name == thing_name), None)
    if existing is None:
        return _moto_create_thing(self, thing_name, thing_type_name, attribute_payload, billing_group_name)
    existing_type = existing.thing_type.thing_type_name if existing.thing_type else None
    attributes = (attribute_payload or {}).get("attributes") or {}
    if (
        (thing_type_name or None) == existing_type
        and attributes == (existing.attributes or {})
        and (billing_group_name or None) == (existing.billing_group_name or None)
    ):
        return existing
    raise ResourceAlreadyExistsException(
        f"Thing {thing_name} already exists in account with different attributes",
        existing.thing_id,
        existing.arn,
    )


IoTBackend.create_thing = create_thing

if __name__ == "__main__":
    if os.environ.get("MOTO_IOT_CA_FILE"):
        write_ca_certificate(os.environ["MOTO_IOT_CA_FILE"])
    sys.exit(main())
