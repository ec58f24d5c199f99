import importlib.metadata

from provision_lint.installed import differences, main


def test_the_installed_version_matches():
    assert differences([f"pytest=={importlib.metadata.version('pytest')}"]) == []


def test_another_version_or_a_missing_package_differs():
    assert differences(["pytest==0.0.1"])
    assert main(["no-such-package-here==1.0"]) == 1
