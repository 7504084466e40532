"""URI parsing, option resolution and error wrapping: pure functions, no server needed."""

from __future__ import annotations

import os

import pytest

from connectors import SourceError, StorageError
from connectors.storage import _s3_settings, classify, parse_uri, redact, wrap_error


@pytest.mark.parametrize("uri, protocol, path, anonymous", [
    ("s3://bucket/key/a.parquet", "s3", "bucket/key/a.parquet", False),
    ("s3://anonymous@air-example-data/ursa-labs-taxi-data/x.parquet/", "s3",
     "air-example-data/ursa-labs-taxi-data/x.parquet/", True),
    ("s3a://bucket/k", "s3", "bucket/k", False),
    ("s3://AKID:secret@bucket/k", "s3", "bucket/k", False),
    ("/abs/data", "file", "/abs/data", False),
    ("file:///abs/data", "file", "/abs/data", False),
    ("memory://x/y", "memory", "x/y", False),
])
def test_parse_uri_splits_protocol_path_and_anonymous_marker(uri, protocol, path, anonymous):
    location = parse_uri(uri)

    assert (location.protocol, location.path, location.anonymous) == (protocol, path, anonymous)


def test_relative_paths_become_absolute():
    assert parse_uri("data/x.parquet").path == os.path.abspath("data/x.parquet")


def test_location_uri_keeps_the_anonymous_marker():
    location = parse_uri("s3://anonymous@bucket/prefix/")

    assert location.uri("bucket/prefix/a.parquet") == "s3://anonymous@bucket/prefix/a.parquet"
    assert location.bucket == "bucket"


def test_redact_drops_credentials_but_keeps_anonymous():
    assert redact("s3://AKID:secret@bucket/k") == "s3://bucket/k"
    assert redact("s3://anonymous@bucket/k") == "s3://anonymous@bucket/k"
    assert redact("/local/path") == "/local/path"


def test_parse_uri_rejects_non_strings():
    with pytest.raises(ValueError, match="expected a URI or path as a non-empty string, found 3"):
        parse_uri(3)


def test_storage_options_take_precedence_over_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    location = parse_uri("s3://bucket/k")

    from_env = _s3_settings(location, None)
    from_options = _s3_settings(location, {"endpoint_url": "http://opt:2", "region_name": "x",
                                           "aws_access_key_id": "AK", "anon": False})

    assert (from_env.endpoint_url, from_env.region) == ("http://env:1", "eu-west-1")
    assert (from_options.endpoint_url, from_options.region, from_options.key) == (
        "http://opt:2", "x", "AK")


def test_service_specific_endpoint_variable_wins(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")

    assert _s3_settings(parse_uri("s3://b/k"), None).endpoint_url == "http://s3-only:2"


def test_anonymous_comes_from_the_uri_or_the_options():
    assert _s3_settings(parse_uri("s3://anonymous@b/k"), None).anon
    assert _s3_settings(parse_uri("s3://b/k"), {"anon": True}).anon
    assert not _s3_settings(parse_uri("s3://b/k"), {}).anon


def test_settings_repr_hides_credentials():
    settings = _s3_settings(parse_uri("s3://b/k"), {"key": "AKIDVISIBLE", "secret": "hidden1",
                                                    "token": "hidden2"})

    assert "hidden" not in repr(settings) and "AKIDVISIBLE" not in repr(settings)


def test_wrap_error_maps_not_found_to_the_requested_class():
    error = wrap_error(FileNotFoundError("gone"), "s3://b/k", "read", not_found=SourceError)

    assert isinstance(error, SourceError)
    assert str(error) == "cannot read s3://b/k: not found (FileNotFoundError: gone)"


def test_wrap_error_explains_denied_access_without_echoing_credentials():
    error = wrap_error(PermissionError("Access Denied"), "s3://AKID:pa55word@b/k", "list")

    assert isinstance(error, StorageError)
    assert "pa55word" not in str(error) and "AKID" not in str(error)
    assert str(error).startswith("cannot list s3://b/k: access denied (PermissionError: Access "
                                 "Denied); check the credentials")


def test_wrap_error_passes_our_own_errors_through():
    ours = SourceError("already ours")

    assert wrap_error(ours, "s3://b/k", "read") is ours


@pytest.mark.parametrize("message, kind", [
    ("AWS Error ACCESS_DENIED during GetObject operation", "denied"),
    ("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation", "not_found"),
    ("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.",
     "throttled"),
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect",
     "unreachable"),
    ("Parquet magic bytes not found in footer", "other"),
    ("file part-00403.parquet is odd", "other"),
])
def test_classify_reads_arrow_error_messages(message, kind):
    assert classify(OSError(message)) == kind
