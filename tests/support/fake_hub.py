"""A local HTTP server standing in for the Hugging Face Hub, for the upload path of `push_to_hub`.

It answers the calls huggingface_hub makes to push a folder (whoami, repo info, create / delete repo,
create branch, validate-yaml, preupload, commit), keeps the files every commit carries, and can be told to
fail commits. Files are uploaded inline ("regular" mode), so no LFS or Xet storage is involved.
`validate-yaml` checks the shape the Hub documents for the metadata fields our cards use; the Hub's
own validator is stricter in ways this stand-in cannot know.
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

TOKEN = "hf_fake_token"
USER = "tester"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []  # {"repo", "revision", "message", "files"}
        self.fail_commits = False
        self.validated = 0  # README.md files checked by validate-yaml
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_DELETE(self):
                hub._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, request, method):
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        path = request.path.split("?")[0]
        parts = path.strip("/").split("/")
        if path == "/api/validate-yaml":  # open to anyone, as on the Hub
            errors = metadata_errors(json.loads(body)["content"])
            self.validated += 1
            return _reply(request, 400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _reply(request, 401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/whoami-v2":
            return _reply(request, 200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}})
        if path == "/api/repos/create" and method == "POST":
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            if repo_id in self.repos:
                return _reply(request, 409, {"error": "You already created this model repo",
                                             "url": f"{self.url}/{repo_id}"})
            visibility = payload.get("visibility", "private" if payload.get("private") else "public")
            self.repos[repo_id] = {"private": visibility == "private", "branches": {"main": {}}}
            return _reply(request, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if path == "/api/repos/delete" and method == "DELETE":
            payload = json.loads(body)
            self.repos.pop(f"{payload.get('organization') or USER}/{payload['name']}", None)
            return _reply(request, 200, {})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            if repo_id not in self.repos:
                return _reply(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            repo, action = self.repos[repo_id], parts[4] if len(parts) > 4 else None
            if action is None or action == "revision":
                return _reply(request, 200, {"id": repo_id, "sha": "0" * 40, "private": repo["private"],
                                             "siblings": []})
            revision = "/".join(parts[5:]) or "main"
            if action == "branch" and method == "POST":
                repo["branches"].setdefault(revision, dict(repo["branches"]["main"]))
                return _reply(request, 200, {})
            if revision not in repo["branches"]:
                return _reply(request, 404, {"error": f"Invalid rev id: {revision}"},
                              {"X-Error-Code": "RevisionNotFound"})
            if action == "preupload":
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                return _reply(request, 200, {"files": modes})
            if action == "commit":
                if self.fail_commits:
                    return _reply(request, 500, {"error": "Internal error"})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                         for line in lines if line["key"] == "file"}
                repo["branches"][revision].update(files)
                self.commits.append({"repo": repo_id, "revision": revision, "message": header["summary"],
                                     "files": files})
                return _reply(request, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{len(self.commits):040x}",
                                             "commitOid": f"{len(self.commits):040x}", "pullRequestUrl": None})
        return _reply(request, 404, {"error": f"fake hub: no route for {method} {path}"})


LICENSES = {"apache-2.0", "mit", "other", "cc-by-4.0", "openrail", "llama3", "gpl-3.0"}  # a sample of the Hub's list


def metadata_errors(readme: str) -> list[str]:
    """What is wrong with a model card's YAML block, for the fields hf-scratch-gpt writes."""
    if not readme.startswith("---\n") or "\n---" not in readme[4:]:
        return ["no YAML metadata block"]
    meta = yaml.safe_load(readme[4:readme.index("\n---", 4)]) or {}
    if not isinstance(meta, dict):
        return ["metadata is not a mapping"]
    errors = []
    if meta.get("license") not in LICENSES:
        errors.append(f"license {meta.get('license')!r} is not a known license id")
    for key in ("library_name", "pipeline_tag", "base_model"):
        if key in meta and not isinstance(meta[key], str):
            errors.append(f"{key} must be a string")
    for key in ("tags", "datasets"):
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
            errors.append(f"{key} must be a list of strings")
    for model in meta.get("model-index", []):
        if not isinstance(model.get("name"), str):
            errors.append("model-index entries need a name")
        for result in model.get("results", []):
            task, dataset, metrics = result.get("task", {}), result.get("dataset", {}), result.get("metrics", [])
            named = all(isinstance(dataset.get(k), str) for k in ("type", "name"))
            if not isinstance(task.get("type"), str) or not named:
                errors.append("model-index results need task.type, dataset.type and dataset.name")
            if not metrics or not all(isinstance(m.get("type"), str) and "value" in m for m in metrics):
                errors.append("model-index metrics need a type and a value")
    return errors


def _reply(request, status, payload, headers=None):
    data = json.dumps(payload).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.end_headers()
    request.wfile.write(data)
