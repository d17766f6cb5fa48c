"""The operator-wide Prometheus settings: trust, credentials and tenant scoping (issue 15)."""

from __future__ import annotations

import argparse

import pytest

from samp_operator.settings import add_arguments, from_env_and_args


def _settings(argv: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_env_and_args(parser.parse_args(argv), env)


def test_tls_is_verified_unless_opted_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert _settings([], {}).prometheus.verify is True
    pem = tmp_path / "ca.crt"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    ca = _settings(["--prometheus-ca-file", str(pem)], {}).prometheus
    assert ca.verify == str(pem)
    # the chart's Secret without ca.crt: the system CAs, still verified
    assert _settings(["--prometheus-ca-file", str(tmp_path / "no")], {}).prometheus.verify
    off = _settings([], {"SAMP_PROMETHEUS_INSECURE_SKIP_VERIFY": "true"}).prometheus
    assert off.verify is False


def test_credentials_come_from_the_environment_never_the_url() -> None:
    s = _settings([], {"SAMP_PROMETHEUS_URL": "https://prom:9090",
                       "SAMP_PROMETHEUS_USERNAME": "u", "SAMP_PROMETHEUS_PASSWORD": "p"})
    assert s.prometheus.credentials.basic() == ("u", "p")
    assert "p" not in repr(s.prometheus.credentials).replace("password", "")
    token = _settings([], {"SAMP_PROMETHEUS_TOKEN": "t0k"}).prometheus.credentials
    assert token.headers() == {"Authorization": "Bearer t0k"} and "t0k" not in repr(token)
    with pytest.raises(ValueError, match=r"SAMP_PROMETHEUS_URL.*credentials in the URL"):
        _settings([], {"SAMP_PROMETHEUS_URL": "https://admin:secret@prom:9090"})


def test_scoping_labels_default_on_and_can_be_turned_off() -> None:
    d = _settings([], {}).prometheus
    assert (d.namespace_label, d.pod_label) == ("namespace", "pod")
    off = _settings(["--prometheus-pod-label", ""],
                    {"SAMP_PROMETHEUS_NAMESPACE_LABEL": "kubernetes_namespace"}).prometheus
    assert (off.namespace_label, off.pod_label) == ("kubernetes_namespace", None)
