"""S3 reads through presigned URLs: botocore signs each object's GET once, and plain aiohttp requests reuse that URL.

Why: through s3fs, every GET runs botocore's whole request path (parameter validation, event hooks, SigV4 signing,
response parsing), 1.6-2.2 ms of the client's CPU for a 1 KiB range; a GET of a presigned URL costs 0.5 ms
(benchmarks/README.md, "Latency"). A loader worker against a real bucket spends its CPU there, not on the server.
The signing is botocore's, through s3fs's own client, so endpoint, region and credentials come from the same chain.
A signed URL carries a signature (and, with temporary credentials, a session token): it is kept in memory only and
never appears in a message; errors name the object as `s3://bucket/key`.

TLS is verified as botocore would: against the `verify` of s3fs's `client_kwargs`, else botocore's `ca_bundle`
(AWS_CA_BUNDLE, or ~/.aws/config), else the system's roots. `usable(fs)` is False for setups whose GETs need more
than a URL (requester-pays, server-side encryption with the client's key); those keep s3fs's path.
"""
from __future__ import annotations

import asyncio
import atexit
import os
import ssl
import time
import urllib.request
from collections import OrderedDict

import aiohttp

SIGNED_FOR = 3600  # seconds a signature is valid
RENEW_AFTER = 3000  # seconds after which a kept URL is signed again, well before it expires
KEPT_URLS = 8192  # signed URLs kept per process (about 1 KB each): the objects a worker reads most recently
RETRIES = 4  # attempts of a GET that fails with a connection error, a 5xx, or a 403 (re-signed first)
TRANSIENT = (500, 502, 503, 504)
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)  # botocore's connect and read timeouts


def usable(fs) -> bool:
    """Whether plain signed GETs read `fs`'s objects as s3fs's own requests would."""
    # requester-pays, SSE-C: headers a URL alone does not carry
    return not (getattr(fs, "req_kw", None) or getattr(fs, "s3_additional_kwargs", None))


_SHARED: dict[int, "SignedGets"] = {}  # by id(fs): fsspec clients compare equal by their arguments, not identity


def for_fs(fs) -> "SignedGets | None":
    """The signed-GET client of `fs` (one HTTP session per filesystem client, shared by every `Remote` of this
    process that uses it), or None where `usable(fs)` is False."""
    if not usable(fs):
        return None
    gets = _SHARED.get(id(fs))
    if gets is None or gets.fs is not fs:  # each keeps its client alive, so an id is never another's while kept
        gets = _SHARED[id(fs)] = SignedGets(fs)
    return gets


class SignedGets:
    """Concurrent GETs of one s3fs filesystem's objects by signed URL, on that filesystem's event loop."""

    def __init__(self, fs):
        self.fs, self._pid = fs, os.getpid()
        self._session = None
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._proxies: dict[tuple[str, str], str | None] = {}

    async def get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes [start, end) of `bucket/key` (start < 0, end None: its last -start bytes; both None: all).
        A missing object raises FileNotFoundError."""
        headers = {} if start is None else {"Range": _range(start, end)}
        session = await self._http()
        for attempt in range(RETRIES):
            last = attempt == RETRIES - 1
            url = await self._url(path)
            try:
                async with session.get(url, headers=headers, proxy=self._proxy(url)) as resp:
                    if resp.status in (200, 206):
                        return await resp.read()
                    if resp.status == 416:  # a range past the end of an empty object
                        return b""
                    code = _error_code(await resp.read())
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as e:
                if last:
                    raise OSError(f"s3://{path}: {type(e).__name__}: {str(e).replace(url, f's3://{path}')}") from None
                await asyncio.sleep(0.1 * 2 ** attempt)
                continue
            if resp.status == 404:
                raise FileNotFoundError(f"s3://{path}")
            if resp.status == 403 and not last:
                self._urls.pop(path, None)  # expired, or credentials rotated since it was signed
                continue
            if resp.status in TRANSIENT and not last:
                await asyncio.sleep(0.1 * 2 ** attempt)
                continue
            if resp.status == 403:
                raise PermissionError(f"s3://{path}: access denied ({code}); check the credentials of your s3 client")
            raise OSError(f"s3://{path}: HTTP {resp.status} ({code})")
        raise AssertionError("unreachable")

    async def _url(self, path: str) -> str:
        kept = self._urls.get(path)
        if kept is not None and time.monotonic() - kept[1] < RENEW_AFTER:
            self._urls.move_to_end(path)
            return kept[0]
        url = await self.fs._url(path, expires=SIGNED_FOR)
        self._urls[path] = (url, time.monotonic())
        while len(self._urls) > KEPT_URLS:
            self._urls.popitem(last=False)
        return url

    async def _http(self):
        if self._session is None:
            await self.fs.set_session()  # botocore's session, whose config `_tls` reads
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, ssl=self._tls()),
                                                  timeout=TIMEOUT)
            atexit.register(self.close)
        return self._session

    def _proxy(self, url: str) -> str | None:
        """The proxy for `url`'s host from HTTP(S)_PROXY / NO_PROXY, as botocore honours them; looked up once per
        host (aiohttp's own `trust_env` reads the environment and ~/.netrc on every request)."""
        scheme, rest = url.split("://", 1)
        host = rest.split("/", 1)[0]
        if (scheme, host) not in self._proxies:
            proxy = urllib.request.getproxies_environment().get(scheme)
            bypass = proxy and urllib.request.proxy_bypass_environment(host.rsplit(":", 1)[0])
            self._proxies[scheme, host] = None if bypass else proxy
        return self._proxies[scheme, host]

    def _tls(self):
        """aiohttp's `ssl`: False (not verified), a context for a CA bundle, or True (the system's roots)."""
        verify = (getattr(self.fs, "client_kwargs", None) or {}).get("verify")
        if verify is False:
            return False
        bundle = verify if isinstance(verify, str) else self.fs.session.get_config_variable("ca_bundle")
        return ssl.create_default_context(cafile=bundle) if bundle else True

    def close(self) -> None:
        """Close the HTTP session (at exit: otherwise aiohttp warns of an unclosed session)."""
        session, self._session = self._session, None
        if session is None or session.closed or os.getpid() != self._pid or not self.fs.loop.is_running():
            return  # a forked child's copy: the loop that owns the session runs in its parent only
        from fsspec.asyn import sync

        try:
            sync(self.fs.loop, session.close, timeout=5)
        except (TimeoutError, RuntimeError):  # the loop is already stopping: nothing left to warn about
            pass


def _range(start: int, end: int | None) -> str:
    if start < 0 and end is None:
        return f"bytes={start}"
    return f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"


def _error_code(body: bytes) -> str:
    """S3's error code (`<Code>NoSuchKey</Code>`) from an error reply, or the reply's first bytes."""
    text = body[:2000].decode("utf-8", "replace")
    if "<Code>" in text:
        return text.split("<Code>", 1)[1].split("</Code>", 1)[0]
    return text[:80].strip() or "no body"
