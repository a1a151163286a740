"""A small Hugging Face Hub of our own, so the Hub tests exercise the real ``huggingface_hub`` client over HTTP
without network access (nothing reachable here accepts uploads, and a mock would test nothing of the protocol).

It implements what ``huggingface_hub`` 2.x calls for ``create_repo`` / ``create_branch``, ``upload_folder`` /
``create_commit`` (README validation, the preupload endpoint deciding regular vs LFS, the LFS batch API with the
basic transfer, the NDJSON commit), ``model_info`` / ``list_repo_tree`` / ``get_paths_info`` /
``list_repo_commits`` / ``list_repo_refs``, and ``hf_hub_download`` (``/{repo}/resolve/{revision}/{path}``).
Model repos only. Like the real Hub, it keeps history: every commit is a new revision with its own sha, files are
content-addressed (git blob ids, LFS sha256) and never overwritten, branches are refs that move; a commit is
applied atomically or not at all. LFS files resolve with a 302 to a second origin, the "CDN", so the client takes
the path it takes on huggingface.co (metadata from ``X-Linked-Etag`` / ``X-Linked-Size`` / ``X-Repo-Commit`` on
the redirect, the download without the token).

Standard library only; loopback only; bounded: request bodies are capped, idle connections time out, the server
stops when told to or after ``lifetime`` seconds. ``die_on_commit=True`` makes it vanish when a commit request
arrives (connections dropped, port closed): the "server went away mid-push" case.

    with HubServer(tmp_dir) as hub:       # hub.url -> http://127.0.0.1:<free port>; HF_ENDPOINT=hub.url
        ...
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import socket
import tempfile
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY = 64 << 20  # bigger requests get 413
MAX_REGULAR_FILE = 10 << 20  # the Hub refuses larger non-LFS files
IDLE_TIMEOUT = 30.0  # seconds a connection may sit idle before the server drops it
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA = re.compile(r"^[0-9a-f]{40}$")
OID = re.compile(r"^[0-9a-f]{64}$")
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.bin",
        "*.ckpt",
        "*.gz",
        "*.h5",
        "*.msgpack",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.ot",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.pt",
        "*.pth",
        "*.safetensors",
        "*.tar",
        "*.tflite",
        "*.zip",
        "*.zst",
    )
)


class HubError(Exception):
    """An error answer, with the ``X-Error-Code`` huggingface_hub maps to its exception classes."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


def git_blob_id(data: bytes) -> str:
    """What git (and the Hub) calls a file's oid; huggingface_hub compares it to skip unchanged regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Storage:
    """Repos on disk, git-like: ``<root>/models/<ns>/<name>/`` holds ``refs.json`` (branch -> commit sha),
    ``commits/<sha>.json`` (parents, message, date and the full tree: path -> blob id or LFS oid),
    ``objects/<blob id>`` (regular files) and ``lfs/<sha256>`` (LFS objects). Objects and commits are written
    once; only refs.json changes, under a lock, after everything it points to is on disk."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.lock = threading.Lock()

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / "models" / repo_id

    def exists(self, repo_id: str) -> bool:
        return (self.repo_dir(repo_id) / "refs.json").is_file()

    def meta(self, repo_id: str) -> dict:
        if not self.exists(repo_id):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads((self.repo_dir(repo_id) / "repo.json").read_text())

    def refs(self, repo_id: str) -> dict[str, str]:
        self.meta(repo_id)
        return json.loads((self.repo_dir(repo_id) / "refs.json").read_text())

    def commit(self, repo_id: str, sha: str) -> dict:
        path = self.repo_dir(repo_id) / "commits" / f"{sha}.json"
        if not path.is_file():
            raise HubError(404, f"Invalid rev id: {sha}", "RevisionNotFound")
        return json.loads(path.read_text())

    def resolve(self, repo_id: str, revision: str) -> str:
        """A branch name or a full commit sha -> the commit sha."""
        refs = self.refs(repo_id)
        revision = revision.removeprefix("refs/heads/")
        if revision in refs:
            return refs[revision]
        if SHA.match(revision) and (self.repo_dir(repo_id) / "commits" / f"{revision}.json").is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def read(self, repo_id: str, entry: dict) -> bytes:
        sub = ("lfs", entry["lfs"]["oid"]) if entry.get("lfs") else ("objects", entry["blob"])
        return (self.repo_dir(repo_id) / sub[0] / sub[1]).read_bytes()

    def has_lfs(self, repo_id: str, oid: str) -> bool:
        return (self.repo_dir(repo_id) / "lfs" / oid).is_file()

    def put_lfs(self, repo_id: str, oid: str, data: bytes) -> None:
        _write_atomic(self.repo_dir(repo_id) / "lfs" / oid, data)

    def create(self, repo_id: str, private: bool, author: str) -> None:
        """A new repo starts, as on the Hub, with one commit adding .gitattributes (LFS for binary formats)."""
        with self.lock:
            if self.exists(repo_id):
                raise HubError(409, "You already created this model repo")
            repo = self.repo_dir(repo_id)
            _write_atomic(repo / "repo.json", json.dumps({"private": private, "createdAt": _now()}).encode())
            data = GITATTRIBUTES.encode()
            blob = self._put_blob(repo_id, data)
            sha = self._put_commit(
                repo_id, [], {".gitattributes": {"blob": blob, "size": len(data)}}, "initial commit", "", author
            )
            _write_atomic(repo / "refs.json", json.dumps({"main": sha}).encode())

    def _put_blob(self, repo_id: str, data: bytes) -> str:
        blob = git_blob_id(data)
        path = self.repo_dir(repo_id) / "objects" / blob
        if not path.exists():
            _write_atomic(path, data)
        return blob

    def _put_commit(self, repo_id, parents, tree, title, description, author) -> str:
        record = {
            "parents": parents,
            "tree": tree,
            "title": title,
            "message": description,
            "author": author,
            "date": _now(),
        }
        text = json.dumps(record, sort_keys=True).encode()
        sha = hashlib.sha1(text).hexdigest()
        _write_atomic(self.repo_dir(repo_id) / "commits" / f"{sha}.json", text)
        return sha

    def create_branch(self, repo_id: str, branch: str, starting_point: str | None) -> None:
        with self.lock:
            refs = self.refs(repo_id)
            if branch in refs:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            refs[branch] = self.resolve(repo_id, starting_point or "main")
            _write_atomic(self.repo_dir(repo_id) / "refs.json", json.dumps(refs).encode())

    def apply_commit(self, repo_id: str, branch: str, header: dict, operations: list[dict], author: str) -> str:
        """Check every operation first, write the new objects, then move the branch: all or nothing."""
        with self.lock:
            refs = self.refs(repo_id)
            if branch not in refs:
                if SHA.match(branch):
                    raise HubError(400, "Cannot commit to a commit sha: pass a branch name as revision")
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = refs[branch]
            parent = header.get("parentCommit")
            if parent is not None and parent != head:
                raise HubError(
                    412,
                    f"parentCommit {parent} is not the head of {branch} ({head}): someone else committed in between",
                )
            tree = dict(self.commit(repo_id, head)["tree"])
            new_blobs = {}
            for op in operations:
                key, value = op.get("key"), op.get("value", {})
                path = value.get("path", "")
                if key == "file":
                    data = base64.b64decode(value["content"])
                    if len(data) > MAX_REGULAR_FILE or b"\0" in data[:8000]:
                        raise HubError(
                            400, f"Your push was rejected because {path} is a binary or large file: upload it with LFS"
                        )
                    blob = git_blob_id(data)
                    new_blobs[blob] = data
                    tree[path] = {"blob": blob, "size": len(data)}
                elif key == "lfsFile":
                    oid = value.get("oid", "")
                    if not self.has_lfs(repo_id, oid):
                        raise HubError(422, f"LFS object {oid} for {path} was never uploaded")
                    size = (self.repo_dir(repo_id) / "lfs" / oid).stat().st_size
                    tree[path] = {"lfs": {"oid": oid, "size": size}, "size": size}
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    tree = {p: e for p, e in tree.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            for blob, data in new_blobs.items():
                self._put_blob(repo_id, data)
            sha = self._put_commit(repo_id, [head], tree, header["summary"], header.get("description", ""), author)
            refs[branch] = sha
            _write_atomic(self.repo_dir(repo_id) / "refs.json", json.dumps(refs).encode())
            return sha

    def history(self, repo_id: str, sha: str) -> list[tuple[str, dict]]:
        """(sha, commit) from ``sha`` back to the initial commit, newest first."""
        out = []
        while sha:
            commit = self.commit(repo_id, sha)
            out.append((sha, commit))
            sha = commit["parents"][0] if commit["parents"] else None
        return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: "HubServer", handler):
        self.hub = hub
        super().__init__(("127.0.0.1", 0), handler)


class HubServer:
    """The Hub (``url``) and its LFS "CDN" (``cdn_url``), two loopback origins on free ports, one storage."""

    def __init__(self, root: str | os.PathLike, *, lifetime: float = 900.0, die_on_commit: bool = False):
        self.storage = Storage(root)
        self.die_on_commit = die_on_commit
        self.uploads: dict[str, tuple[str, str, int]] = {}  # one-time LFS upload ticket -> (repo, oid, size)
        self.requests: list[str] = []  # "METHOD path" of every request, for tests
        self._connections: set[socket.socket] = set()
        self._servers = [_Server(self, _HubHandler), _Server(self, _CdnHandler)]
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        self._stopping = threading.Lock()  # taken once, by the first stop()
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def start(self) -> "HubServer":
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection: to a client, the server is gone."""
        if not self._stopping.acquire(blocking=False):
            return
        self._timer.cancel()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def setup(self):
        super().setup()
        self.hub._connections.add(self.connection)

    def finish(self):
        self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # quiet: the test output is the client's
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str):
        self.hub.requests.append(f"{method} {self.path}")
        url = urlsplit(self.path)
        # Split the raw path before unquoting: a revision like "refs%2Fpr%2F1" is one segment.
        self.segments = [unquote(s) for s in url.path.split("/")[1:]]
        self.query = parse_qs(url.query)
        try:
            # Read the whole body first, whatever the answer: left unread, it would poison the kept-alive connection.
            self.raw_body = self._read_body()
            self.route(method)
        except HubError as e:
            self._send_json({"error": e.message}, e.status, code=e.code, commit=e.commit)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    self.close_connection = True
                    raise HubError(413, "Request body too large for the test hub")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise HubError(413, "Request body too large for the test hub")
        return self.rfile.read(length)

    def json_body(self) -> dict:
        try:
            return json.loads(self.raw_body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not JSON")

    def user(self, required: bool) -> str | None:
        """Any non-empty bearer token is the user ``user`` (the tests use a dummy token); writes need one."""
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if required and not token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return "user" if token else None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self,
        payload,
        status: int = 200,
        code: str | None = None,
        commit: str | None = None,
        headers: dict | None = None,
    ):
        headers = dict(headers or {})
        if code:
            headers["X-Error-Code"] = code
        if status >= 400:
            headers["X-Error-Message"] = payload["error"]
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps(payload).encode(), headers)

    def not_found(self, method: str):
        raise HubError(404, f"The test hub does not implement {method} {urlsplit(self.path).path}")


class _HubHandler(_Handler):
    def route(self, method: str):
        s = self.segments
        if s[:1] == ["api"]:
            if method == "POST" and s[1:] == ["repos", "create"]:
                return self.create_repo()
            if method == "POST" and s[1:] == ["validate-yaml"]:
                return self._send_json({"errors": [], "warnings": []})
            if method == "PUT" and s[1:2] == ["lfs-upload"] and len(s) == 3:
                return self.lfs_upload(s[2])
            if len(s) >= 4 and s[1] in ("datasets", "spaces"):
                raise HubError(400, f"The test hub only has model repos, not {s[1]}")
            if len(s) >= 4 and s[1] == "models":
                return self.repo_api(method, f"{s[2]}/{s[3]}", s[4:])
        elif (
            len(s) == 6 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"] and method == "POST"
        ):
            return self.lfs_batch(f"{s[0]}/{s[1][:-4]}")
        elif len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve(f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        self.not_found(method)

    def readable(self, repo_id: str) -> dict:
        """A private repo is invisible without a token, as on the Hub (404, not 403)."""
        meta = self.hub.storage.meta(repo_id)
        if meta["private"] and self.user(False) is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return meta

    def create_repo(self):
        user = self.user(True)
        payload = self.json_body()
        name, namespace = payload.get("name"), payload.get("organization") or user
        if payload.get("type", "model") != "model":
            raise HubError(400, "The test hub only has model repos")
        if not isinstance(name, str) or not REPO_NAME.match(name) or not REPO_NAME.match(namespace):
            raise HubError(400, f"Invalid repo name {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        try:
            self.hub.storage.create(repo_id, private, user)
        except HubError as e:
            self._send_json({"error": e.message, "url": f"{self.hub.url}/{repo_id}"}, e.status)
            return
        self._send_json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def repo_api(self, method: str, repo_id: str, rest: list[str]):
        storage = self.hub.storage
        meta = self.readable(repo_id)
        action, arg = (rest[0] if rest else None), "/".join(rest[1:2])
        if method == "GET" and action in (None, "revision"):
            return self.info(repo_id, meta, storage.resolve(repo_id, arg if action else "main"))
        if method == "GET" and action == "tree" and len(rest) >= 2:
            sha = storage.resolve(repo_id, rest[1])
            return self.tree(repo_id, sha, "/".join(rest[2:]).strip("/"))
        if method == "POST" and action == "paths-info" and len(rest) == 2:
            sha = storage.resolve(repo_id, arg)
            form = parse_qs(self.raw_body.decode())
            entries = _tree_entries(storage.commit(repo_id, sha)["tree"])
            return self._send_json([entries[p] for p in form.get("paths", []) if p in entries])
        if method == "GET" and action == "commits" and len(rest) == 2:
            return self._send_json(
                [
                    {
                        "id": sha,
                        "title": c["title"],
                        "message": c["message"],
                        "authors": [{"user": c["author"]}],
                        "date": c["date"],
                    }
                    for sha, c in storage.history(repo_id, storage.resolve(repo_id, arg))
                ]
            )
        if method == "GET" and action == "refs" and len(rest) == 1:
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in storage.refs(repo_id).items()
            ]
            return self._send_json({"branches": branches, "converts": [], "tags": []})
        if method == "POST" and action == "branch" and len(rest) == 2:
            self.user(True)
            storage.create_branch(repo_id, arg, self.json_body().get("startingPoint"))
            return self._send_json({})
        if method == "POST" and action == "preupload" and len(rest) == 2:
            self.user(True)
            return self.preupload(repo_id, arg)
        if method == "POST" and action == "commit" and len(rest) == 2:
            return self.commit(repo_id, arg)
        self.not_found(method)

    def info(self, repo_id: str, meta: dict, sha: str):
        commit = self.hub.storage.commit(repo_id, sha)
        blobs = "blobs" in self.query
        siblings = []
        for path, entry in sorted(commit["tree"].items()):
            sibling = {"rfilename": path}
            if blobs:
                file = _file_entry(path, entry)
                sibling.update(size=file["size"], blobId=file["oid"])
                if "lfs" in file:
                    sibling["lfs"] = {
                        "sha256": file["lfs"]["oid"],
                        "size": file["lfs"]["size"],
                        "pointerSize": file["lfs"]["pointerSize"],
                    }
            siblings.append(sibling)
        namespace = repo_id.split("/")[0]
        self._send_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": namespace,
                "sha": sha,
                "lastModified": commit["date"],
                "createdAt": meta["createdAt"],
                "private": meta["private"],
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": siblings,
            }
        )

    def tree(self, repo_id: str, sha: str, path: str):
        entries = _tree_entries(self.hub.storage.commit(repo_id, sha)["tree"])
        if path and (path not in entries or entries[path]["type"] != "directory"):
            raise HubError(404, f"{path} does not exist at {sha}", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path}/" if path else ""
        children = [
            e for p, e in sorted(entries.items()) if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
        ]
        self._send_json(children)

    def preupload(self, repo_id: str, revision: str):
        """Regular or LFS, as the Hub decides: .gitattributes patterns of the target revision, binary content
        (a NUL byte in the sample) or size. ``oid`` lets the client skip files whose content is already there."""
        storage = self.hub.storage
        tree = storage.commit(repo_id, storage.resolve(repo_id, revision))["tree"]
        patterns = []
        if ".gitattributes" in tree:
            for line in storage.read(repo_id, tree[".gitattributes"]).decode().splitlines():
                parts = line.split()
                if len(parts) > 1 and "filter=lfs" in parts[1:]:
                    patterns.append(parts[0])
        files = []
        for file in self.json_body().get("files", []):
            path = file["path"]
            lfs = (
                file["size"] > MAX_REGULAR_FILE
                or b"\0" in base64.b64decode(file.get("sample", ""))
                or any(fnmatch.fnmatch(path if "/" in p else path.rsplit("/", 1)[-1], p) for p in patterns)
            )
            entry = tree.get(path)
            oid = (entry["lfs"]["oid"] if entry.get("lfs") else entry["blob"]) if entry else None
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send_json({"files": files})

    def lfs_batch(self, repo_id: str):
        """git-lfs batch API, basic transfer: an upload URL (a one-time ticket on this server) per missing object."""
        self.user(True)
        self.readable(repo_id)
        payload = self.json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "The test hub's LFS batch API only uploads")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid", ""), obj.get("size", -1)
            if not OID.match(oid) or not isinstance(size, int) or size < 0:
                objects.append(
                    {
                        "oid": str(oid),
                        "size": int(size) if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid oid or size"},
                    }
                )
            elif self.hub.storage.has_lfs(repo_id, oid):
                objects.append({"oid": oid, "size": size})
            else:
                ticket = secrets.token_hex(16)
                self.hub.uploads[ticket] = (repo_id, oid, size)
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {"upload": {"href": f"{self.hub.url}/api/lfs-upload/{ticket}"}},
                    }
                )
        self._send_json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def lfs_upload(self, ticket: str):
        """The basic transfer's PUT: the ticket authorises it; the content must hash to the announced oid."""
        if ticket not in self.hub.uploads:
            raise HubError(403, "Unknown or used LFS upload URL")
        repo_id, oid, size = self.hub.uploads[ticket]
        data = self.raw_body
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} and size {size}")
        self.hub.storage.put_lfs(repo_id, oid, data)
        del self.hub.uploads[ticket]
        self._send(200)

    def commit(self, repo_id: str, revision: str):
        if self.hub.die_on_commit:
            self.close_connection = True
            self.hub.stop()
            return
        user = self.user(True)
        if "create_pr" in self.query:
            raise HubError(501, "The test hub does not implement pull requests")
        try:
            lines = [json.loads(line) for line in self.raw_body.decode().splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "The commit body is not NDJSON")
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise HubError(400, "A commit needs a header line with a non-empty summary")
        sha = self.hub.storage.apply_commit(repo_id, revision, lines[0]["value"], lines[1:], user)
        self._send_json(
            {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}", "hookOutput": ""}
        )

    def resolve(self, repo_id: str, revision: str, path: str):
        """Regular files: 200 with the git blob id as ETag. LFS files: 302 to the CDN origin carrying the file's
        metadata, as huggingface.co does. X-Repo-Commit always, also on a 404 (the client caches the absence)."""
        storage = self.hub.storage
        self.readable(repo_id)
        sha = storage.resolve(repo_id, revision)
        entry = storage.commit(repo_id, sha)["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {sha}", "EntryNotFound", commit=sha)
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry.get("lfs"):
            oid = entry["lfs"]["oid"]
            headers.update(
                {
                    "X-Linked-Etag": f'"{oid}"',
                    "X-Linked-Size": str(entry["size"]),
                    "ETag": f'"{git_blob_id(lfs_pointer(oid, entry["size"]))}"',
                    "Location": f"{self.hub.cdn_url}/lfs/{repo_id}/{oid}",
                }
            )
            return self._send(302, b"", headers)
        headers["ETag"] = f'"{entry["blob"]}"'
        self._send(200, storage.read(repo_id, entry), headers, content_type="application/octet-stream")


class _CdnHandler(_Handler):
    """LFS objects by content address, like the Hub's signed CDN URLs: no token needed, Range supported."""

    def route(self, method: str):
        s = self.segments
        if method not in ("GET", "HEAD") or len(s) != 4 or s[0] != "lfs" or not OID.match(s[3]):
            self.not_found(method)
        repo_id, oid = f"{s[1]}/{s[2]}", s[3]
        if not self.hub.storage.has_lfs(repo_id, oid):
            raise HubError(404, "No such object")
        data = (self.hub.storage.repo_dir(repo_id) / "lfs" / oid).read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}", "ETag": f'"{oid}"'}
            return self._send(206, data[start : end + 1], headers, content_type="application/octet-stream")
        self._send(200, data, {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"}, content_type="application/octet-stream")


def _file_entry(path: str, entry: dict) -> dict:
    """A tree / paths-info item; an LFS file's oid is its pointer's git blob id, as in git."""
    if entry.get("lfs"):
        oid, size = entry["lfs"]["oid"], entry["size"]
        pointer = lfs_pointer(oid, size)
        return {
            "type": "file",
            "path": path,
            "size": size,
            "oid": git_blob_id(pointer),
            "lfs": {"oid": oid, "size": size, "pointerSize": len(pointer)},
        }
    return {"type": "file", "path": path, "size": entry["size"], "oid": entry["blob"]}


def _tree_entries(tree: dict) -> dict[str, dict]:
    """Every file and every directory of a commit's tree, by path."""
    entries = {}
    for path, entry in tree.items():
        entries[path] = _file_entry(path, entry)
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            entries.setdefault(
                folder,
                {"type": "directory", "path": folder, "size": 0, "oid": hashlib.sha1(folder.encode()).hexdigest()},
            )
    return entries
