"""Where captured data lands: an S3 bucket (through boto3), or a local directory.

The fleet never receives the data itself: it hands each device short-lived presigned
PUT URLs for keys under the device's own prefix (``<fleet>/<device>/``), and the device
uploads straight to the store.  For the local-directory backend the fleet service serves
the PUTs itself and checks an HMAC signature in the URL in the same way, streaming each body
to a file up to a size cap; its objects are 0640 in directories 0750.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, BinaryIO, Iterator

from edgekiln.artifact.names import is_valid_name
from edgekiln.errors import DependencyError, UserError
from edgekiln.fleet.database import make_private_dirs

# A key segment after the model name: what the agent produces (dates, batch and record ids,
# object names) — the agent's record-id rule.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# Where the fleet service serves the local store's presigned PUTs and (packages) GETs.
PUT_PATH = "/v1/objects/"
GET_PATH = "/v1/package-files/"


class TooLarge(UserError):
    """A body over its size cap."""


def check_relative_key(key: str) -> str:
    """A device-relative key, ``<model name>/<segment>/…``: the model name follows the name
    rule the agent applies, every later segment is letters, digits and '_.:-' (no '..')."""
    parts = key.split("/")
    if (
        not key
        or len(key) > 400
        or len(parts) < 2
        or not is_valid_name(parts[0])
        or any(not _SEGMENT_RE.fullmatch(p) or p in (".", "..") for p in parts[1:])
    ):
        raise UserError(
            f"object key {key[:100]!r} is not a valid relative key",
            hint="<model name>/<segments of letters, digits and '_.:-'>",
        )
    return key


class S3Objects:
    """An S3 bucket: AWS, or any S3 API (SeaweedFS, MinIO) by endpoint URL."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise DependencyError("boto3 is not installed", hint="pip install 'edgekiln[fleet]'") from None
        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def ensure_ready(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise UserError(f"S3 bucket {self.bucket}: {exc}") from None
        except BotoCoreError as exc:
            raise UserError(f"S3 endpoint unreachable: {exc}") from None
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise UserError(f"cannot create S3 bucket {self.bucket}: {exc}") from None

    def presign_put(self, key: str, expires_in: int, base_url: str) -> str:
        return self.client.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

    def presign_get(self, key: str, expires_in: int, base_url: str) -> str:
        """A URL that GETs ``key`` (S3 serves Range requests) for ``expires_in`` seconds."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
        )

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (multipart when large; whole or not at all)."""
        self.client.upload_file(str(path), self.bucket, key)

    def head(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def list(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
        return sorted(out)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


class LocalObjects:
    """A directory; presigned URLs point at the fleet service's own ``/v1/objects`` route."""

    def __init__(self, root: str | os.PathLike[str], secret: bytes) -> None:
        self.root = Path(root)
        self.secret = secret

    def ensure_ready(self) -> None:
        make_private_dirs(self.root, 0o750)

    def _signature(self, verb: str, key: str, expires: int) -> str:
        # The verb is signed: a PUT URL of a key can never serve as its GET URL, nor back.
        return hmac.new(self.secret, f"{verb}\n{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _presign(self, verb: str, route: str, key: str, expires_in: int, base_url: str) -> str:
        expires = int(time.time()) + int(expires_in)
        query = urllib.parse.urlencode({"expires": expires, "signature": self._signature(verb, key, expires)})
        return f"{base_url.rstrip('/')}{route}{urllib.parse.quote(key)}?{query}"

    def presign_put(self, key: str, expires_in: int, base_url: str) -> str:
        return self._presign("PUT", PUT_PATH, key, expires_in, base_url)

    def presign_get(self, key: str, expires_in: int, base_url: str) -> str:
        """A URL of the service's own GET route (with Range) for ``expires_in`` seconds."""
        return self._presign("GET", GET_PATH, key, expires_in, base_url)

    def verify(self, key: str, expires: int, signature: str, now: float, verb: str = "PUT") -> bool:
        return now <= expires and hmac.compare_digest(self._signature(verb, key, expires), signature)

    def path(self, key: str) -> Path:
        """The file of ``key`` (which may not exist); a key with empty, . or .. parts is refused."""
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise UserError(f"bad object key {key!r}")
        return self.root.joinpath(*parts)

    @contextmanager
    def _writing(self, key: str) -> Iterator[BinaryIO]:
        """A new file for ``key``: it replaces the object only when the block ends without an
        error, so an object appears whole or not at all."""
        path = self.path(key)
        make_private_dirs(path.parent, 0o750)
        tmp = path.with_name(path.name + f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        """Write the chunks to ``key`` as they come, at most ``limit`` bytes (else TooLarge and
        nothing is stored); the object appears whole or not at all.  Returns its size."""
        size = 0
        with self._writing(key) as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"object {key} is over the {limit}-byte limit")
                fh.write(chunk)
        return size

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key`` (whole or not at all)."""
        with open(path, "rb") as src, self._writing(key) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    def head(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def list(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.endswith(".tmp"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append((key, path.stat().st_size))
        return sorted(out)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()


def describe(store: Any) -> str:
    if isinstance(store, S3Objects):
        return f"s3://{store.bucket} at {store.client.meta.endpoint_url}"
    return f"directory {getattr(store, 'root', '?')}"
