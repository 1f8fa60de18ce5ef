"""S3 reads by signed URL (`stores/s3_get.py`) against moto's S3 server on localhost: the bytes s3fs's own GETs read,
for every kind of range; the URLs kept, bounded and signed again; errors that name the object, never a signed URL;
TLS settings as botocore's; setups that need headers keep s3fs's path."""
import os
import socket
import ssl

import pytest

from test_object_store import _s3_server

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server, two objects in its bucket, and the client environment (set here too)."""
    bucket, stop, _ = _s3_server()
    saved = {k: os.environ.get(k) for k in bucket.env}
    os.environ.update(bucket.env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a client made for another module's server (another endpoint)
    fs = bucket.fs()
    fs.makedirs("bucket", exist_ok=True)  # moto's state is the process's: another module may have made it
    fs.pipe_file("bucket/a/data", DATA)
    fs.pipe_file("bucket/a/empty", b"")
    yield bucket
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    stop()


def _gets(fs):
    from motionssl.stores.s3_get import SignedGets

    return SignedGets(fs)


def _run(fs, coro):
    from fsspec.asyn import sync

    return sync(fs.loop, lambda: coro)


RANGES = [(None, None), (0, 1), (10, 20), (100, 10_240), (5_000, None), (-100, None), (-20_000, None)]


def test_signed_gets_read_what_s3fs_reads_and_the_store_reads_by_them(s3):
    from motionssl.stores.remote import Remote

    fs = s3.fs()
    gets = _gets(fs)
    for start, end in RANGES:
        want = DATA[start:end] if start is not None else DATA
        assert _run(fs, gets.get("bucket/a/data", start, end)) == want, (start, end)
        if start is not None and start >= 0:
            assert fs.cat_file("bucket/a/data", start=start, end=end) == want, (start, end)
    assert _run(fs, gets.get("bucket/a/empty")) == b""
    with pytest.raises(FileNotFoundError, match=r"s3://bucket/a/missing"):
        _run(fs, gets.get("bucket/a/missing", 0, 10))
    with pytest.raises(FileNotFoundError):
        _run(fs, gets.get("no-such-bucket/a/data"))
    gets.close()

    remote = Remote("s3://bucket/a")
    assert remote.get_ranges([("data", 10, 20), ("data", -5, None)]) == [DATA[10:20], DATA[-5:]]
    assert remote.get_many(["data", "missing"]) == {"data": DATA, "missing": None}
    assert type(remote._signed).__name__ == "SignedGets"  # the store's reads went by signed URL
    again = Remote("s3://bucket/a")
    again.get("data")
    assert again._signed is remote._signed  # one HTTP session per filesystem client, not per Remote


def test_urls_are_kept_bounded_and_signed_again_when_old(s3, monkeypatch):
    from motionssl.stores import s3_get

    fs = s3.fs()
    gets = _gets(fs)
    monkeypatch.setattr(s3_get, "KEPT_URLS", 2)
    for key in ("bucket/a/data", "bucket/a/empty", "bucket/a/data"):
        _run(fs, gets.get(key, 0, 1))
    assert list(gets._urls) == ["bucket/a/empty", "bucket/a/data"]  # the latest two, latest last
    kept = gets._urls["bucket/a/data"]
    _run(fs, gets.get("bucket/a/data", 0, 1))
    assert gets._urls["bucket/a/data"] == kept  # reused while young
    monkeypatch.setattr(s3_get, "RENEW_AFTER", 0)
    assert _run(fs, gets.get("bucket/a/data", 3, 9)) == DATA[3:9]
    assert gets._urls["bucket/a/data"][1] > kept[1]  # signed again
    gets.close()


def test_a_failed_get_names_the_object_and_never_its_signed_url(s3, monkeypatch):
    """A server that cannot be reached: after the retries, one error naming s3://bucket/key, with no signature,
    access key or query string in it."""
    import s3fs

    from motionssl.stores import s3_get

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(s3_get, "RETRIES", 2)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=f"http://127.0.0.1:{port}")
    gets = _gets(fs)
    with pytest.raises(OSError) as caught:
        _run(fs, gets.get("bucket/a/data", 0, 10))
    message = str(caught.value)
    assert message.startswith("s3://bucket/a/data: ") and "\n" not in message, message
    assert not any(s in message for s in ("Signature", "X-Amz", "?", s3.env["AWS_ACCESS_KEY_ID"], s3.secret))
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    gets.close()


def test_tls_is_verified_as_botocore_would(s3, monkeypatch, tmp_path):
    import s3fs

    import certifi  # a CA bundle (moto needs requests, which needs certifi)

    bundle = certifi.where()

    def tls(**kw):
        gets = _gets(s3fs.S3FileSystem(skip_instance_cache=True, **kw))
        _run(gets.fs, gets.fs.set_session())
        return gets._tls()

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assert tls() is True  # the system's roots
    assert tls(client_kwargs={"verify": False}) is False
    assert isinstance(tls(client_kwargs={"verify": bundle}), ssl.SSLContext)
    monkeypatch.setenv("AWS_CA_BUNDLE", bundle)
    context = tls()
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError):
        tls()


def test_setups_that_need_request_headers_keep_s3fs_reads(s3):
    import s3fs

    from motionssl.stores import s3_get
    from motionssl.stores.remote import Remote

    assert s3_get.usable(s3fs.S3FileSystem(skip_instance_cache=True))
    assert not s3_get.usable(s3fs.S3FileSystem(skip_instance_cache=True, requester_pays=True))
    assert not s3_get.usable(s3fs.S3FileSystem(skip_instance_cache=True,
                                                s3_additional_kwargs={"SSECustomerAlgorithm": "AES256"}))
    remote = Remote("s3://bucket/a")
    remote.fs.req_kw = {"RequestPayer": "requester"}  # moto ignores the header; the path taken is what is checked
    assert remote.get_ranges([("data", 10, 20)]) == [DATA[10:20]]
    assert remote._signed is False



def test_no_credentials_is_one_line_naming_where_they_come_from(s3, monkeypatch, tmp_path):
    import s3fs

    from motionssl.stores import StoreError, open_store

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StoreError) as caught:
        open_store("s3://bucket/a.zarr")
    message = str(caught.value)
    assert "Unable to locate credentials" in message and "AWS_ACCESS_KEY_ID" in message and "\n" not in message
    s3fs.S3FileSystem.clear_instance_cache()
