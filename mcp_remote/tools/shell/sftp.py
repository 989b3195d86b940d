"""The workspace of an SSH sandbox, over SFTP.

Paths get the same lexical rules as everywhere (workspace.relative_path); symlinks are resolved by
the server (`realpath`) and the result must stay under the workspace's own real path. Unlike the
local jail this is a check followed by a use: a command of the same principal that swaps a symlink
in between can win the race. It gains nothing by it: the remote sandbox runs that principal's
commands as the same remote user, which can read those files anyway. The check is there so that
fs_* calls mean what they say, not as the sandbox's wall (the remote machine is).
"""

from __future__ import annotations

import posixpath
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import asyncssh

from mcp_local.errors import ToolError

from .workspace import FileChunk, ListEntry, WriteOutcome, entry_kind, relative_path

if TYPE_CHECKING:
    from .sshpool import SshPool

__all__ = ["SftpWorkspace"]

T = TypeVar("T")

_SKIP_DIRS = frozenset({".git", ".hg", ".svn"})


class SftpWorkspace:
    def __init__(self, pool: SshPool, workspace: str) -> None:
        self._pool = pool
        self._workspace = workspace
        self._root: str | None = None
        self.mount = workspace

    async def _with(self, path: str, op: Callable[[asyncssh.SFTPClient, str], Awaitable[T]]) -> T:
        c, sftp = await self._pool.sftp()
        try:
            if self._root is None:
                self._root = await sftp.realpath(self._workspace)
                self.mount = self._root
            return await op(sftp, self._root)
        except asyncssh.SFTPNoSuchFile:
            raise ToolError(f"{path[:200]}: no such file or directory") from None
        except asyncssh.SFTPPermissionDenied:
            raise ToolError(f"{path[:200]}: permission denied") from None
        except asyncssh.SFTPError as exc:
            raise ToolError(f"{path[:200]}: {exc.reason}") from None
        finally:
            await self._pool.release(c)

    @staticmethod
    async def _inside(sftp: asyncssh.SFTPClient, root: str, full: str, path: str) -> str:
        real = await sftp.realpath(full)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise ToolError(f"path {path[:200]!r} leads outside the workspace (through a symlink); refused")
        return real

    def _full(self, root: str, path: str) -> str:
        rel = relative_path(path, root)
        return root if rel == "." else posixpath.join(root, rel)

    async def read(self, path: str, offset: int, limit: int) -> FileChunk:
        async def op(sftp: asyncssh.SFTPClient, root: str) -> FileChunk:
            real = await self._inside(sftp, root, self._full(root, path), path)
            attrs = await sftp.stat(real)
            if not stat.S_ISREG(attrs.permissions or 0):
                raise ToolError(f"{path[:200]}: not a regular file ({entry_kind(attrs.permissions)})")
            async with sftp.open(real, "rb", encoding=None) as f:
                await f.seek(offset)
                data = await f.read(limit)
            assert isinstance(data, bytes)
            return FileChunk(posixpath.relpath(real, root), attrs.size or 0, offset, data)

        return await self._with(path, op)

    async def write(self, path: str, data: bytes, *, append: bool, make_parents: bool) -> WriteOutcome:
        async def op(sftp: asyncssh.SFTPClient, root: str) -> WriteOutcome:
            full = self._full(root, path)
            if full == root:
                raise ToolError(f"{path[:200]}: is the workspace directory, not a file")
            parent, name = posixpath.split(full)
            if make_parents:
                current = root
                for part in posixpath.relpath(parent, root).split("/"):
                    if part in ("", "."):
                        continue
                    nxt = posixpath.join(current, part)
                    if await sftp.lexists(nxt):
                        current = await self._inside(sftp, root, nxt, path)
                    else:
                        await sftp.mkdir(nxt)
                        current = nxt
            real_parent = await self._inside(sftp, root, parent, path)
            target = posixpath.join(real_parent, name)
            existing = None
            if await sftp.lexists(target):
                existing = await sftp.lstat(target)
                if stat.S_ISLNK(existing.permissions or 0):
                    raise ToolError(f"{path[:200]}: is a symlink; write to the file it points to instead")
                if not stat.S_ISREG(existing.permissions or 0):
                    raise ToolError(f"{path[:200]}: exists and is not a regular file")
            rel = posixpath.relpath(target, root)
            if append and existing is not None:
                async with sftp.open(target, "ab", encoding=None) as f:
                    await f.write(data)
                return WriteOutcome(rel, (await sftp.stat(target)).size or 0, created=False)
            tmp = posixpath.join(real_parent, f".mcphub-write-{secrets.token_hex(8)}")
            async with sftp.open(tmp, "wb", encoding=None) as f:
                await f.write(data)
            if existing is not None and existing.permissions is not None:
                await sftp.chmod(tmp, stat.S_IMODE(existing.permissions))
            await sftp.posix_rename(tmp, target)
            return WriteOutcome(rel, len(data), created=existing is None)

        return await self._with(path, op)

    async def _walk(
        self, sftp: asyncssh.SFTPClient, directory: str, prefix: str, recursive: bool
    ) -> AsyncIterator[tuple[str, str, asyncssh.SFTPAttrs]]:
        names = sorted(await sftp.readdir(directory), key=lambda n: str(n.filename))
        for entry in names:
            name = str(entry.filename)
            if name in (".", ".."):
                continue
            rel = prefix + name
            full = posixpath.join(directory, name)
            yield rel, full, entry.attrs
            if recursive and stat.S_ISDIR(entry.attrs.permissions or 0) and name not in _SKIP_DIRS:
                async for item in self._walk(sftp, full, rel + "/", recursive):
                    yield item

    async def list(self, path: str, *, recursive: bool, max_entries: int) -> tuple[list[ListEntry], bool]:
        async def op(sftp: asyncssh.SFTPClient, root: str) -> tuple[list[ListEntry], bool]:
            real = await self._inside(sftp, root, self._full(root, path), path)
            base = posixpath.relpath(real, root)
            base = "" if base == "." else base + "/"
            entries: list[ListEntry] = []
            async for rel, full, attrs in self._walk(sftp, real, "", recursive):
                if len(entries) >= max_entries:
                    return entries, False
                kind = entry_kind(attrs.permissions)
                target = str(await sftp.readlink(full)) if kind == "symlink" else None
                entries.append(ListEntry(base + rel, kind, attrs.size or 0, float(attrs.mtime or 0), target))
            return entries, True

        return await self._with(path, op)

    async def resolve_dir(self, path: str) -> str:
        async def op(sftp: asyncssh.SFTPClient, root: str) -> str:
            real = await self._inside(sftp, root, self._full(root, path), path)
            if not await sftp.isdir(real):
                raise ToolError(f"{path[:200]}: not a directory")
            return real

        return await self._with(path, op)
