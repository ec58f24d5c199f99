import json

from provision_lint.aws_iot_policy import DOCUMENT, create


class FakeIot:
    def __init__(self):
        self.calls = []

    def create_policy(self, **kw):
        self.calls.append(kw)


def test_it_creates_the_connect_policy():
    iot = FakeIot()
    create(iot, "balena-provision-device")
    assert iot.calls == [{"policyName": "balena-provision-device", "policyDocument": json.dumps(DOCUMENT)}]
    assert DOCUMENT["Statement"][0]["Action"] == "iot:Connect"
