"""JPEGs in an S3-compatible object store, shared by any number of look hosts.

Keys under ``s3://BUCKET/PREFIX``::

    PREFIX/images/<id>.jpeg       stored images
    PREFIX/images/<id>.webp       the animated WebP of an animation
    PREFIX/quarantine/<id>.jpeg   objects moved aside by hand or by an older check

A put never replaces an object (``If-None-Match: *``), so an id is stored
once. A put that got no answer may still store its object, even after look
gave up on it (PutInDoubt): the library lists it for removal, later.
Renders read originals through a bounded cache on this host's disk
(``look.core.imagestore.originals``); downloads stream from the store unless
the cache has the file. The client is made lazily in each process that
uses it, never before gunicorn forks; a store that does not answer is
BackendUnavailable (503) within a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any

import boto3
import botocore.config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from look.core.breaker import Breaker
from look.core.ids import is_valid_id
from look.core.imagestore import (
    ANIMATION,
    JPEG,
    KINDS,
    MEDIA_TYPES,
    Finished,
    Original,
    PutInDoubt,
    StoredObject,
)
from look.core.imagestore.originals import OriginalsCache, cache_key
from look.core.lazy import PerProcess
from look.errors import BackendUnavailable, BackendUnreachable, ImageExists, ImageNotFound

log = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024
_NOT_FOUND = frozenset({'NoSuchKey', 'NotFound', '404'})
# Codes of a put refused because the key exists (or is being written by another put).
_EXISTS = frozenset({'PreconditionFailed', 'ConditionalRequestConflict', '412'})


# NOTE: one boto3 session per process: a client made from a session that has
#   loaded S3's model once takes milliseconds, from a new one a quarter second.
#   Sessions are not thread-safe, so clients are made under a lock.
_session = PerProcess(boto3.session.Session)
_session_lock = threading.Lock()


def _new_client(config: botocore.config.Config, options: dict[str, str]) -> Any:
    with _session_lock:
        return _session.get().client('s3', config=config, **options)


def parse_images_url(url: str) -> tuple[str, str]:
    """Return the bucket and the key prefix ('' or ending in '/') of an s3:// URL."""
    parts = urllib.parse.urlparse(url)
    prefix = parts.path.strip('/')
    return parts.netloc, f'{prefix}/' if prefix else ''


def _error_code(ex: ClientError) -> str:
    return str(ex.response.get('Error', {}).get('Code', ''))


def _retried(ex: ClientError) -> bool:
    """Return whether the request that got this answer was sent more than once."""
    return bool(ex.response.get('ResponseMetadata', {}).get('RetryAttempts', 0))


# Errors that say the store was not reached or did not answer in time.
_UNREACHED = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
    ConnectionClosedError,
)
# NOTE: after such an error, requests answer 503 at once for this long rather
#   than each wait out the timeouts of a store that does not answer.
RETRY_INTERVAL = 2.0
# NOTE: each request to the store gets CONNECT_TIMEOUT to connect and its
#   timeout (3 s) for each read; a put waits up to EXPECT_WAIT for its
#   "100 Continue" before it sends its body anyway. ATTEMPTS in all (one
#   retry), so a store that is down answers 503 in seconds and one that
#   dropped a kept-alive connection costs no request; botocore pauses at
#   most RETRY_PAUSE before the retry.
CONNECT_TIMEOUT = 1.0
EXPECT_WAIT = 1.0
ATTEMPTS = 2
RETRY_PAUSE = 1.0


class _Outage:
    """The store's breaker, and how the store's errors read to look."""

    def __init__(self) -> None:
        self.breaker = Breaker(RETRY_INTERVAL)

    def check(self) -> None:
        """Raise BackendUnreachable while the last failure to answer is recent."""
        if self.breaker.open:
            raise BackendUnreachable('The image store does not answer now; try again shortly.')

    def record(
        self, ex: Exception, kind: type[BackendUnavailable] = BackendUnavailable
    ) -> BackendUnavailable:
        """Return the error to raise for ``ex``; trip the breaker if the store was not reached."""
        log.error('the object store does not answer: %s', ex)
        if isinstance(ex, _UNREACHED):
            self.breaker.trip()
        return kind('The image store does not answer now; try again shortly.')

    def answered(self) -> None:
        """Note that the store answered."""
        if self.breaker.close():
            log.info('the object store answers again')

    @contextlib.contextmanager
    def answers(self, image_id: str) -> Iterator[None]:
        """Turn the store's errors into ImageNotFound (no such key) or BackendUnavailable."""
        self.check()
        try:
            yield
        except ClientError as ex:
            if _error_code(ex) in _NOT_FOUND:
                raise ImageNotFound(f'No image has the id {image_id}.') from None
            raise self.record(ex) from ex
        except BotoCoreError as ex:
            raise self.record(ex) from ex
        self.answered()


class S3ImageStore:
    """Images as objects: put once, streamed or fetched into the originals cache."""

    def __init__(
        self,
        url: str,
        *,
        options: dict[str, str],
        originals: OriginalsCache,
        timeout: float = 3.0,
    ) -> None:
        self.url = url
        self.bucket, self.prefix = parse_images_url(url)
        self.options = dict(options)
        self.originals = originals
        self.timeout = timeout
        self._client = PerProcess(self._new_client)
        self._outage = _Outage()

    # -- start-up ---------------------------------------------------------

    def open(self) -> None:
        """Make sure the bucket exists (create it if not), with a client of its own.

        Raise BackendUnavailable if the store refuses or cannot be reached.
        """
        self.originals.open()
        try:
            client = self._new_client()
        except BotoCoreError as ex:
            raise BackendUnavailable(str(ex)) from ex
        try:
            try:
                client.head_bucket(Bucket=self.bucket)
            except ClientError as ex:
                if _error_code(ex) not in ('404', 'NoSuchBucket', 'NotFound'):
                    raise
                try:
                    client.create_bucket(Bucket=self.bucket)
                    log.info('created the bucket %s', self.bucket)
                except ClientError as again:
                    # Another host or worker created it a moment ago.
                    if _error_code(again) != 'BucketAlreadyOwnedByYou':
                        raise
        except (ClientError, BotoCoreError) as ex:
            raise BackendUnavailable(f'the bucket {self.bucket} cannot be used: {ex}') from ex
        finally:
            client.close()

    def close(self) -> None:
        """Close this process's client, if it made one."""
        client = self._client.take()
        if client is not None:
            client.close()

    # -- the client -------------------------------------------------------

    @property
    def put_gives_up_within(self) -> float:
        """Seconds a put takes at most when the store stops answering: every attempt and pause.

        11 s by default: 2 attempts of 1 s to connect, 1 s for "100 Continue"
        and 3 s to read, and 1 s between them.
        """
        connect = min(CONNECT_TIMEOUT, self.timeout)
        attempt = connect + EXPECT_WAIT + self.timeout
        return ATTEMPTS * attempt + (ATTEMPTS - 1) * RETRY_PAUSE

    def _new_client(self) -> Any:
        # PERF: botocore's checks of a put's body stay on: a CRC32 (a header)
        #   and, on an http:// endpoint only, a SHA-256 in the signature. For
        #   a 90 KB JPEG they cost about 70 µs of the put's 1.3 ms of CPU; the
        #   rest is botocore's work per request (signing, endpoint rules,
        #   events, parsing), whatever these options say. Sending the body
        #   as bytes (no "Expect: 100-continue") measured the same.
        settings: dict[str, Any] = {
            'connect_timeout': min(CONNECT_TIMEOUT, self.timeout),
            'read_timeout': self.timeout,
            # NOTE: total_max_attempts counts the first; max_attempts would not.
            'retries': {'total_max_attempts': ATTEMPTS, 'mode': 'standard'},
            # More connections than a worker has threads (12).
            'max_pool_connections': 16,
        }
        if 'endpoint_url' in self.options:
            # Stores other than AWS (SeaweedFS, MinIO, Ceph) address buckets by path.
            settings['s3'] = {'addressing_style': 'path'}
        return _new_client(botocore.config.Config(**settings), self.options)

    @property
    def client(self) -> Any:
        """Return this process's client, made on first use (after any fork)."""
        return self._client.get()

    def key(self, image_id: str, kind: str = JPEG) -> str:
        """Return the key of the JPEG (or other ``kind``) of ``image_id``; the id must be valid."""
        if not is_valid_id(image_id) or kind not in KINDS:
            raise ImageNotFound(f'No image has the id {image_id!r}.')
        return f'{self.prefix}images/{image_id}.{kind}'

    def _quarantine_key(self, image_id: str, kind: str = JPEG) -> str:
        return f'{self.prefix}quarantine/{image_id}.{kind}'

    # -- images -----------------------------------------------------------

    def put(self, image_id: str, jpeg: Finished, kind: str = JPEG) -> None:
        """Upload the finished JPEG (or other ``kind``) under its id, never over another object.

        Once a request is sent, a failure is PutInDoubt: a write the store
        received may land after look gave up on it, so the object is not
        removed here (a removal now could come before it); see look.core.removals.
        """
        key = self.key(image_id, kind)
        self._outage.check()
        try:
            with open(jpeg.path, 'rb') as data:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType=MEDIA_TYPES[kind],
                    IfNoneMatch='*',
                )
        except ClientError as ex:
            if _error_code(ex) in _EXISTS and not _retried(ex):
                raise ImageExists(f'An image with the id {image_id} already exists.') from None
            # NOTE: refused as existing on a second attempt: most likely the
            #   first attempt's own write, which timed out and landed after all.
            raise self._outage.record(ex, PutInDoubt) from ex
        except BotoCoreError as ex:
            raise self._outage.record(ex, PutInDoubt) from ex
        self._outage.answered()
        self.originals.add(cache_key(image_id, kind), jpeg.path)

    def open_original(self, image_id: str, kind: str = JPEG) -> Original:
        """Open the JPEG of an image: the cached file, else a stream from the store.

        A stream read to its end is kept in the cache, for the next download
        or render on this host.
        """
        key = self.key(image_id, kind)
        cached = self.originals.open_file(cache_key(image_id, kind))
        if cached is not None:
            return Original(cached, os.fstat(cached.fileno()).st_size)
        with self._outage.answers(image_id):
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        length = int(response['ContentLength'])
        try:
            body = self.originals.keeping(
                cache_key(image_id, kind), _Body(response['Body']), length
            )
        except BaseException:
            response['Body'].close()
            raise
        return Original(body, length)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def local_path(self, image_id: str, kind: str = JPEG) -> Iterator[str]:
        """Give a local file of the object: from the originals cache, else fetched into it once."""
        key = self.key(image_id, kind)
        with self.originals.lease(cache_key(image_id, kind)) as cached:
            if cached is not None:
                yield cached
                return
        with self.originals.fill(cache_key(image_id, kind), self._fetcher(image_id, key)) as path:
            yield path

    def _fetcher(self, image_id: str, key: str) -> Callable[[IO[bytes]], None]:
        """Return a function that copies the object at ``key`` into a file."""

        def fetch(out: IO[bytes]) -> None:
            with self._outage.answers(image_id):
                body = self.client.get_object(Bucket=self.bucket, Key=key)['Body']
                try:
                    while chunk := body.read(_COPY_CHUNK):
                        out.write(chunk)
                finally:
                    body.close()

        return fetch

    def exists(self, image_id: str, kind: str = JPEG) -> bool:
        """Return whether the store holds the object now (asking the store, not the cache)."""
        return self._has(self.key(image_id, kind))

    def _has(self, key: str) -> bool:
        try:
            with self._outage.answers(key):
                self.client.head_object(Bucket=self.bucket, Key=key)
        except ImageNotFound:
            return False
        return True

    def delete(self, image_id: str) -> None:
        """Remove the image's objects (one already gone is not an error) and this host's copies."""
        keys = [self.key(image_id, kind) for kind in KINDS]
        for kind in KINDS:
            self.originals.discard(cache_key(image_id, kind))
        # NOTE: the animation first: a JPEG left by a failure keeps its animation.
        with self._outage.answers(image_id):
            for key in reversed(keys):
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def objects(self, kind: str = JPEG) -> Iterator[StoredObject]:
        """Yield every image object (or animation), with the time it was written."""
        yield from self._listed(f'{self.prefix}images/', kind)

    def in_progress(self, image_id: str) -> bool:
        """Return False: an object waits for its row a moment only; a check's grace covers it."""
        return False

    def _listed(self, prefix: str, kind: str = JPEG) -> Iterator[StoredObject]:
        suffix = f'.{kind}'
        paginator = self.client.get_paginator('list_objects_v2')
        with self._outage.answers(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get('Contents', ()):
                    name = item['Key'][len(prefix) :]
                    image_id = name.removesuffix(suffix)
                    if name.endswith(suffix) and is_valid_id(image_id):
                        yield StoredObject(image_id, item['LastModified'].timestamp())

    # -- quarantine -------------------------------------------------------

    def quarantine(self, image_id: str) -> None:
        """Move an object (and its animation) aside, under quarantine/."""
        if self._has(self.key(image_id, ANIMATION)):
            self._move(self.key(image_id, ANIMATION), self._quarantine_key(image_id, ANIMATION))
        self._move(self.key(image_id), self._quarantine_key(image_id))
        for kind in KINDS:
            self.originals.discard(cache_key(image_id, kind))

    def _move(self, source: str, target: str) -> None:
        with self._outage.answers(source):
            self.client.copy_object(
                Bucket=self.bucket, Key=target, CopySource={'Bucket': self.bucket, 'Key': source}
            )
            self.client.delete_object(Bucket=self.bucket, Key=source)

    def quarantined(self) -> Iterator[StoredObject]:
        """Yield the objects under quarantine/."""
        yield from self._listed(f'{self.prefix}quarantine/')

    def restore(self, image_id: str) -> None:
        """Move a quarantined object back into place (never over another)."""
        if self.exists(image_id):
            raise ImageExists(f'An image with the id {image_id} already exists.')
        if self._has(self._quarantine_key(image_id, ANIMATION)):
            self._move(self._quarantine_key(image_id, ANIMATION), self.key(image_id, ANIMATION))
        self._move(self._quarantine_key(image_id), self.key(image_id))

    # -- health -----------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Report whether the bucket answers, and what this host keeps in its cache."""
        try:
            self._outage.check()
            self.client.head_bucket(Bucket=self.bucket)
        except BackendUnreachable:
            return {'status': 'fail', 'detail': 'the object store did not answer a moment ago'}
        except (ClientError, BotoCoreError) as ex:
            if isinstance(ex, _UNREACHED):
                self._outage.breaker.trip()
            return {'status': 'fail', 'detail': f'the object store does not answer: {ex}'}
        self._outage.answered()
        return {
            'status': 'ok',
            'bucket': self.bucket,
            'originals_cached_bytes': self.originals.size(),
        }


class _Body:
    """A download streamed from the store, read in large pieces; a broken stream is logged."""

    # NOTE: the server asks for 8 KiB at a time; a larger piece costs fewer
    #   trips through Python for each megabyte sent.
    PIECE = 256 * 1024

    def __init__(self, body: Any) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._body.read(max(size, self.PIECE) if size and size > 0 else None)
        except (BotoCoreError, OSError) as ex:
            # NOTE: the status line is sent; the client sees a short body.
            log.error('a download from the object store broke off: %s', ex)
            raise
        return data

    def close(self) -> None:
        self._body.close()
